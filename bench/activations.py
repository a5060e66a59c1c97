"""Activations per second of the bridge, against the ceilings of the broker and the database.

One invocation does everything, for each table size (default 10,000 and 1,000,000
approved identifiers, all claimed beforehand in bulk):

1. loads the approval list with generate_series, claimed and with an open window;
2. starts ``bridge serve`` as a subprocess (its RSS and CPU are sampled with psutil)
   and the echo service (bench/echo.py) on a second topic prefix of the same shape;
3. measures, alternating so each ceiling is taken minutes from the bridge figure:
   the database ceiling (bench/dbceiling.py), the echo and the bridge in closed loop
   (N in flight) and in open loop at each offered rate;
4. on the largest table, keeps the bridge busy until it has served --rss-activations
   activations and reports its RSS then.

Finally it prints the tables (bridge, ceiling, ratio), writes the figures as JSON and
plots throughput and p99 against offered load (PNG, matplotlib).

Run from the repository root:  python bench/activations.py
Quick check:                     python bench/activations.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import dbceiling
import loadgen
import psutil
import services

from bridge.store import Store

VENDOR = "bench"
MODEL = "sn-1"


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def identifier(n: int) -> str:
    return f"SN{n:09d}"


# -- the approval list ----------------------------------------------------------------


async def load_table(admin_url: str, size: int) -> tuple[str, int, float]:
    """A fresh database with ``size`` approved and claimed identifiers: (dsn, model id, s)."""
    name = f"bench_{size}_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = with_database(admin_url, name)
    async with Store.open(dsn, pool_size=1) as store:
        await store.migrate()
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        model_id = await conn.fetchval(
            # The load generator sends no public key: a model with plaintext delivery.
            "INSERT INTO models (vendor, model, kind, plaintext_keys) "
            "VALUES ($1, $2, 'serial', true) RETURNING id",
            VENDOR,
            MODEL,
        )
        await insert_claimed(conn, model_id, size)
        await conn.execute("VACUUM (ANALYZE) devices")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return dsn, model_id, time.perf_counter() - started


async def insert_claimed(conn: asyncpg.Connection, model_id: int, size: int) -> None:
    """``size`` approved identifiers, claimed, in one statement (fold as identifiers.py)."""
    owner_id = await conn.fetchval(
        """INSERT INTO owners (name) VALUES ('bench')
           ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id"""
    )
    await conn.execute(
        """INSERT INTO devices (model_id, identifier, lookalike, state, owner_id,
                                window_ends_at)
           SELECT $1, s, translate(s, 'OILSBZG', '0115826'), 'claimed', $2,
                  now() + interval '7 days'
             FROM (SELECT 'SN' || lpad(i::text, 9, '0') AS s
                     FROM generate_series(0, $3 - 1) AS i) g""",
        model_id,
        owner_id,
        size,
    )


class FreshIdentifiers:
    """Hands out claimed, never-activated identifiers; reloads the table when used up."""

    def __init__(self, dsn: str, model_id: int, size: int) -> None:
        self.dsn, self.model_id, self.size = dsn, model_id, size
        self.cursor = 0
        self.taken = 0  # over the whole run, for the RSS target
        self.resets = 0

    def take(self) -> str | None:
        if self.cursor >= self.size:
            return None
        self.cursor += 1
        self.taken += 1
        return identifier(self.cursor - 1)

    async def ensure(self, wanted: int) -> None:
        """At least min(wanted, size) fresh identifiers (reloads all if short), then settle.

        Settling (VACUUM of the tables activations write, CHECKPOINT) before every run
        that touches the database keeps maintenance owed by earlier runs, and by the bulk
        reloads only the small table needs, out of the next run's figures, so that the
        two table sizes are compared on equal terms. The long RSS run pays its own.
        """
        conn = await asyncpg.connect(self.dsn)
        try:
            if self.size - self.cursor < min(wanted, self.size):
                # Loaded afresh rather than re-claimed with an UPDATE: a table whose every
                # row was just rewritten measured ~2x PostgreSQL CPU per activation, which
                # would be a cost of this bench, not of the table's size.
                await conn.execute("TRUNCATE devices, replies, claims")
                await insert_claimed(conn, self.model_id, self.size)
                self.cursor = 0
                self.resets += 1
            await conn.execute("VACUUM (ANALYZE) devices, replies, audit_log")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()


# -- processes and their resources ----------------------------------------------------


@dataclass
class Sampler:
    """Peak RSS of the bridge and CPU seconds of every process, sampled in a thread."""

    pids: dict[str, int]
    peak_rss: int = 0
    last_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        bridge = psutil.Process(self.pids["bridge"])
        while not self._stop.wait(0.1):
            with contextlib.suppress(psutil.Error):
                self.last_rss = bridge.memory_info().rss
                self.peak_rss = max(self.peak_rss, self.last_rss)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process (postgres: the server and its backends)."""
        used = {}
        for name, pid in self.pids.items():
            try:
                proc = psutil.Process(pid)
                times = proc.cpu_times()
                used[name] = times.user + times.system
                if name == "postgres":
                    # Backends: the live ones, and those that exited (reaped by the postmaster).
                    used[name] += times.children_user + times.children_system
                    for child in proc.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            t = child.cpu_times()
                            used[name] += t.user + t.system
            except psutil.Error:
                used[name] = 0.0
        # The whole machine, so that other load on it shows (it would skew every figure).
        total = psutil.cpu_times()
        used["machine"] = total.user + total.system + total.nice + total.irq + total.softirq
        return used


@contextlib.contextmanager
def subprocess_ready(
    argv: list[str], env: dict[str, str], log: Path, marker: str
) -> Iterator[subprocess.Popen[bytes]]:
    out = log.open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while marker not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[1:3]} did not start; see {log}:\n{log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        services.stop(proc)
        out.close()


def profile(args: argparse.Namespace, pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on the bridge during its closed-loop run (--py-spy), as a flame graph."""
    if not args.py_spy:
        return None
    print(f"py-spy: recording the bridge to {path}", flush=True)
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
         "--rate", "200", "--output", str(path), "--nonblocking", "--format", "raw"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def hot_spots(path: Path, top: int = 30) -> str:
    """Inclusive share of samples per function, from py-spy's collapsed stacks."""
    if not path.exists():
        return f"py-spy wrote no profile to {path}"
    inclusive: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # a frame name py-spy broke over two lines
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        where = leaf.rsplit("(", 1)[-1]
        package = where.split("site-packages/")[-1].split("/")[0] if "/" in where else where
        by_package[package.split(":")[0]] += n
        for frame in set(stack.split(";")):
            inclusive[frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].rstrip(")")] += n
    rows = [f"py-spy: {total} samples of the bridge (idle excluded), top by inclusive share:"]
    rows += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    rows.append("self time by package (where the leaf frame is):")
    rows += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_package.most_common(12)]
    return "\n".join(rows)


# -- one table size -------------------------------------------------------------------


async def measure_size(
    args: argparse.Namespace,
    admin_url: str,
    mqtt_url: str,
    pids: dict[str, int],
    size: int,
    workdir: Path,
    *,
    rss_run: bool,
) -> dict[str, Any]:
    print(f"\n== {size:,} approved identifiers ==", flush=True)
    dsn, model_id, load_s = await load_table(admin_url, size)
    print(f"loaded in {load_s:.1f} s", flush=True)
    fresh = FreshIdentifiers(dsn, model_id, size)
    tag = f"{size}-{secrets.token_hex(2)}"
    bridge_prefix, echo_prefix = f"bench-{tag}/provision", f"bench-{tag}-echo/provision"
    env = {
        **os.environ,
        "BRIDGE_DATABASE_URL": dsn,
        "BRIDGE_MQTT_URL": mqtt_url,
        "BRIDGE_SECRET": secrets.token_hex(32),
        "BRIDGE_TOPIC_PREFIX": bridge_prefix,
        "BRIDGE_CLIENT_ID": f"bench-bridge-{tag}",
        "BRIDGE_MAX_IN_FLIGHT": str(args.max_in_flight),
        "BRIDGE_DB_POOL_SIZE": str(args.db_pool_size),
    }
    bridge_argv = [sys.executable, "-m", "bridge", "serve"]
    echo_argv = [
        sys.executable,
        str(Path(__file__).with_name("echo.py")),
        "--mqtt",
        mqtt_url,
        "--prefix",
        echo_prefix,
        "--client-id",
        f"bench-echo-{tag}",
        "--max-in-flight",
        str(args.max_in_flight),
    ]
    results: list[loadgen.RunResult] = []
    pool_size = max(args.in_flight, args.pool)

    with (
        subprocess_ready(bridge_argv, env, workdir / f"bridge-{tag}.log", "subscribed") as bridge,
        subprocess_ready(
            echo_argv, dict(os.environ), workdir / f"echo-{tag}.log", "subscribed"
        ) as echo,
    ):
        sampler = Sampler({**pids, "bridge": bridge.pid, "echo": echo.pid, "bench": os.getpid()})
        try:
            async with (
                loadgen.device_pool(mqtt_url, bridge_prefix, pool_size, f"b{tag}") as bdevs,
                loadgen.device_pool(mqtt_url, echo_prefix, pool_size, f"e{tag}") as edevs,
            ):
                echo_ids = loadgen.counter_identifiers("ECHO")

                async def measured(coro: Any) -> loadgen.RunResult:
                    before, t0 = sampler.cpu(), time.perf_counter()
                    result: loadgen.RunResult = await coro
                    after, wall = sampler.cpu(), time.perf_counter() - t0
                    result.extra["size"] = size
                    result.extra["cpu_per_s"] = {
                        k: round((after[k] - before[k]) / wall, 2) for k in after
                    }
                    result.extra["bridge_rss_mb"] = round(sampler.last_rss / 2**20, 1)
                    ours = sum(v for k, v in result.extra["cpu_per_s"].items() if k != "machine")
                    result.extra["cpu_per_s"]["others"] = round(
                        result.extra["cpu_per_s"]["machine"] - ours, 2
                    )
                    # CPU time per completed activation: steadier than throughput on a busy box.
                    done = result.completed
                    result.extra["cpu_ms_per_activation"] = {
                        k: round(1000 * (after[k] - before[k]) / done, 3) if done else None
                        for k in after
                        if k not in ("machine",)
                    }
                    results.append(result)
                    print(result.line(), flush=True)
                    print(
                        "         cpu (cores): "
                        + "  ".join(f"{k} {v:.2f}" for k, v in result.extra["cpu_per_s"].items())
                        + "   ms/activation: "
                        + "  ".join(
                            f"{k} {v:.2f}"
                            for k, v in result.extra["cpu_ms_per_activation"].items()
                            if v and v > 0.001
                        ),
                        flush=True,
                    )
                    return result

                bridge_kw: dict[str, Any] = {"label": "bridge", "vendor": VENDOR, "model": MODEL}
                db_taken = 0

                warm = 1.0
                # Closed loops, repeated (--repeat) and alternated: database ceiling (as
                # many connections as the bridge's pool), echo, bridge. The report takes
                # the median of each, which steadies the 10,000 / 1,000,000 comparison.
                for rep in range(args.repeat):
                    await fresh.ensure(int(6000 * (args.seconds + warm)))
                    before = fresh.taken
                    await measured(
                        dbceiling.run(
                            dsn,
                            model_id,
                            fresh.take,
                            connections=args.db_pool_size,
                            seconds=args.seconds,
                            # Short: at 10,000 rows the ceiling uses the table up in 2 s.
                            warmup=0.3,
                        )
                    )
                    db_taken += fresh.taken - before
                    await measured(
                        loadgen.closed_loop(
                            edevs[: args.in_flight], echo_ids, label="echo", vendor=VENDOR,
                            model=MODEL, seconds=args.seconds, echo=True,
                        )
                    )  # fmt: skip
                    await fresh.ensure(int(3000 * (args.seconds + warm)))
                    spy = (
                        profile(args, bridge.pid, workdir / f"bridge-closed-{size}.txt")
                        if rep == 0
                        else None
                    )
                    await measured(
                        loadgen.closed_loop(
                            bdevs[: args.in_flight], fresh.take, seconds=args.seconds,
                            **bridge_kw,
                        )
                    )  # fmt: skip
                    if spy is not None:
                        spy.wait()
                        print(hot_spots(workdir / f"bridge-closed-{size}.txt"), flush=True)
                # Open loop at each offered rate.
                for rate in args.rates:
                    await measured(
                        loadgen.open_loop(
                            edevs[: args.pool], echo_ids, label="echo", vendor=VENDOR,
                            model=MODEL, rate=rate, seconds=args.seconds, echo=True,
                        )
                    )  # fmt: skip
                    await fresh.ensure(int(rate * (args.seconds + warm) * 1.05) + 10)
                    await measured(
                        loadgen.open_loop(
                            bdevs[: args.pool], fresh.take, rate=rate, seconds=args.seconds,
                            **bridge_kw,
                        )
                    )  # fmt: skip
                rss: dict[str, Any] = {}
                if rss_run and args.rss_activations:
                    # The bridge has served `bridge_sent` requests so far; top up to the target.
                    bridge_sent = fresh.taken - db_taken
                    remaining = args.rss_activations - bridge_sent
                    print(
                        f"RSS run: {bridge_sent:,} activations so far; "
                        f"{max(remaining, 0):,} more (closed loop, N={args.in_flight})",
                        flush=True,
                    )
                    started = time.perf_counter()
                    while remaining > 0:
                        await fresh.ensure(remaining)
                        chunk = min(remaining, fresh.size - fresh.cursor)
                        budget = iter(range(chunk))
                        take = fresh.take

                        def limited(budget: Iterator[int] = budget, take: Any = take) -> str | None:
                            return take() if next(budget, None) is not None else None

                        result = await loadgen.closed_loop(
                            bdevs[: args.in_flight], limited, label="bridge", vendor=VENDOR,
                            model=MODEL, seconds=10**6, warmup=0.0,
                        )  # fmt: skip
                        remaining -= chunk
                        print(result.line(), flush=True)
                    await asyncio.sleep(1.0)  # let the last replies and log lines settle
                    rss = {
                        "activations": args.rss_activations,
                        "seconds": round(time.perf_counter() - started, 1),
                        "rss_mb": round(sampler.last_rss / 2**20, 1),
                        "peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
                    }
                    print(
                        f"bridge RSS after {args.rss_activations:,} activations: "
                        f"{rss['rss_mb']} MB (peak {rss['peak_rss_mb']} MB)",
                        flush=True,
                    )
        finally:
            sampler.close()
    return {
        "size": size,
        "load_seconds": round(load_s, 1),
        "resets": fresh.resets,
        "bridge_peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
        "rss": rss,
        "runs": [r.as_dict() for r in results],
    }


# -- the report -----------------------------------------------------------------------


def find(runs: list[dict[str, Any]], label: str, mode: str, level: float) -> dict[str, Any]:
    """The run of that kind; of repeated runs, the median by throughput."""
    found = [r for r in runs if r["label"] == label and r["mode"] == mode and r["level"] == level]
    if not found:
        return {}
    found.sort(key=lambda r: r["throughput"])
    return found[(len(found) - 1) // 2]


def spread(runs: list[dict[str, Any]], label: str, mode: str, level: float) -> str:
    """All throughputs of a repeated run, for the report."""
    found = [r for r in runs if r["label"] == label and r["mode"] == mode and r["level"] == level]
    return ", ".join(f"{r['throughput']:.0f}" for r in found)


def others(run: dict[str, Any]) -> str:
    """CPU used on the machine by processes that are not part of the bench, during a run."""
    value = run.get("cpu_per_s", {}).get("others")
    return f"{max(value, 0.0):.2f}" if value is not None else "-"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def report(sizes: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = []
    for s in sizes:
        runs = s["runs"]
        db = find(runs, "db", "closed", args.db_pool_size)
        be, ee = (find(runs, x, "closed", args.in_flight) for x in ("bridge", "echo"))
        lines += [
            f"### {s['size']:,} approved identifiers",
            "",
            "| run | bridge /s | echo /s | bridge/echo | bridge p50 ms | bridge p99 ms "
            "| echo p99 ms | bridge errors | other load (cores) |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| closed N={args.in_flight} | {be['throughput']:.0f} | {ee['throughput']:.0f} "
            f"| {ratio(be['throughput'], ee['throughput'])} | {be['p50_ms']:.1f} "
            f"| {be['p99_ms']:.1f} | {ee['p99_ms']:.1f} | {be['errors'] or 'none'} "
            f"| {others(be)} |",
        ]
        for rate in args.rates:
            b, e = find(runs, "bridge", "open", rate), find(runs, "echo", "open", rate)
            lines.append(
                f"| open {rate:g}/s | {b['throughput']:.0f} | {e['throughput']:.0f} "
                f"| {ratio(b['throughput'], e['throughput'])} | {b['p50_ms']:.1f} "
                f"| {b['p99_ms']:.1f} | {e['p99_ms']:.1f} | {b['errors'] or 'none'} "
                f"| {others(b)} |"
            )
        lines += [
            "",
            f"Closed loops run {args.repeat} times, alternated; the table shows the median. "
            f"All runs, per second: bridge {spread(runs, 'bridge', 'closed', args.in_flight)}; "
            f"echo {spread(runs, 'echo', 'closed', args.in_flight)}; database ceiling "
            f"{spread(runs, 'db', 'closed', args.db_pool_size)}.",
            f"Database ceiling ({args.db_pool_size} connections calling "
            "bridge_activate_throttled): "
            f"{db['throughput']:.0f}/s, p50 {db['p50_ms']:.1f} ms, p99 {db['p99_ms']:.1f} ms; "
            f"bridge closed loop / database ceiling = {ratio(be['throughput'], db['throughput'])}.",
            f"Bridge peak RSS: {s['bridge_peak_rss_mb']} MB. Table loaded in "
            f"{s['load_seconds']} s; reloaded {s['resets']} time(s) between runs.",
        ]
        if s["rss"]:
            lines.append(
                f"Bridge RSS after {s['rss']['activations']:,} activations: "
                f"{s['rss']['rss_mb']} MB (peak {s['rss']['peak_rss_mb']} MB)."
            )
        for name, run in (("bridge", be), ("echo", ee), ("database ceiling", db)):
            cores = run.get("cpu_per_s", {})
            per = run.get("cpu_ms_per_activation", {})
            lines.append(
                f"CPU during the {name} closed loop, cores: "
                + ", ".join(f"{k} {v:.2f}" for k, v in cores.items())
                + "; ms per activation: "
                + ", ".join(f"{k} {v:.3f}" for k, v in per.items() if v and v > 0.005)
                + "."
            )
        lines.append("")
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        a = find(small["runs"], "bridge", "closed", args.in_flight)["throughput"]
        b = find(large["runs"], "bridge", "closed", args.in_flight)["throughput"]
        da = find(small["runs"], "db", "closed", args.db_pool_size)["throughput"]
        db_ = find(large["runs"], "db", "closed", args.db_pool_size)["throughput"]
        lines.append(
            f"Closed-loop throughput at {large['size']:,} / at {small['size']:,}: bridge "
            f"{ratio(b, a)}, database ceiling {ratio(db_, da)}."
        )
    return "\n".join(lines)


def plot(sizes: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    styles = {"bridge": "-o", "echo": "--s"}
    for s in sizes:
        for label in ("bridge", "echo"):
            runs = [find(s["runs"], label, "open", r) for r in args.rates]
            name = f"{label}, {s['size']:,} approved"
            top.plot(args.rates, [r["throughput"] for r in runs], styles[label], label=name)
            bottom.plot(args.rates, [r["p99_ms"] for r in runs], styles[label], label=name)
    top.plot(args.rates, args.rates, ":", color="grey", label="offered")
    top.set_ylabel("achieved activations / s")
    top.set_title("Open loop, QoS 1, commit before reply (one 2-core machine)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.axhline(50, color="red", linestyle=":", label="p99 target 50 ms")
    bottom.set_yscale("log")
    bottom.set_xlabel("offered activations / s")
    bottom.set_ylabel("p99 time to key (ms)")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }


async def amain(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    info = machine()
    print(f"machine: {info}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-activations-"))
    with services.postgres() as (pg_url, pg_pid), services.mosquitto() as (mqtt_url, mq_pid):
        pids = {k: v for k, v in (("postgres", pg_pid), ("mosquitto", mq_pid)) if v}
        conn = await asyncpg.connect(pg_url)
        try:
            settings = {
                n: await conn.fetchval(f"SHOW {n}")
                for n in ("fsync", "synchronous_commit", *services.PG_SETTINGS, "server_version")
            }
        finally:
            await conn.close()
        print(f"postgres: {settings}", flush=True)
        sizes = []
        for n, size in enumerate(args.sizes):
            sizes.append(
                await measure_size(
                    args, pg_url, mqtt_url, pids, size, workdir, rss_run=n == len(args.sizes) - 1
                )
            )
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"machine": info, "postgres": settings, "args": vars(args), "sizes": sizes}, workdir


def write_outputs(out: dict[str, Any], args: argparse.Namespace, workdir: Path) -> None:
    text = report(out["sizes"], args)
    print("\n" + text)
    if args.markdown:
        m = out["machine"]
        head = (
            f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gb']} GB, Python "
            f"{m['python']}; load average {m['load_before']} before, {m['load_after']} after.\n"
            f"PostgreSQL: {out['postgres']}.\n\n"
        )
        Path(args.markdown).write_text(head + text + "\n")
        print(f"tables written to {args.markdown}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"figures written to {args.json}")
    if args.plot:
        plot(out["sizes"], args, Path(args.plot))
        print(f"plot written to {args.plot}")
    print(f"logs of the bridge and echo service: {workdir}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def numbers(text: str) -> list[int]:
        return [int(float(x)) for x in text.split(",") if x]

    parser.add_argument("--sizes", type=numbers, default=[10_000, 1_000_000])
    parser.add_argument("--rates", type=numbers, default=[100, 300, 600, 900, 1200, 1500])
    parser.add_argument("--in-flight", type=int, default=64, help="closed loop N (default 64)")
    parser.add_argument("--pool", type=int, default=128, help="open loop device clients")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="closed-loop repetitions")
    parser.add_argument("--rss-activations", type=int, default=200_000)
    parser.add_argument("--max-in-flight", type=int, default=64, help="BRIDGE_MAX_IN_FLIGHT")
    parser.add_argument("--db-pool-size", type=int, default=10, help="BRIDGE_DB_POOL_SIZE")
    parser.add_argument(
        "--py-spy", action="store_true", help="flame graph of the bridge's closed-loop run"
    )
    parser.add_argument("--json", default="bench/results.json", help="figures as JSON")
    parser.add_argument("--plot", default="docs/performance.png", help="PNG plot path")
    parser.add_argument("--markdown", default="bench/results.md", help="the tables, as Markdown")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2,000 and 20,000 identifiers, short runs, no RSS run",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rates, args.seconds, args.rss_activations = (
            [2_000, 20_000],
            [100, 300],
            2.0,
            0,
        )
        args.repeat = 1
        args.json, args.plot, args.markdown = "", "", ""
    try:
        import uvloop

        out, workdir = uvloop.run(amain(args))
    except ImportError:
        out, workdir = asyncio.run(amain(args))
    write_outputs(out, args, workdir)


if __name__ == "__main__":
    main()
