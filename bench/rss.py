"""Peak RSS of ``bridge serve`` over a long run of activations, and where it goes.

Starts Debian's PostgreSQL 15 with its stock configuration and Mosquitto (as
bench/stock.py does), loads ``--activations`` claimed identifiers, starts the bridge
with its default settings and offers the activations in chunks from 50 client ids
(``mosquitto_pub -l``), printing the bridge's VmRSS and VmHWM after each chunk.

``--py-spy`` profiles the bridge during the second chunk (py-spy, on PATH) and prints
where its samples fall. ``--tracemalloc N`` runs the bridge with tracemalloc (N frames)
and prints the allocation sites that grew the most between its start and ``--mid``
seconds into the first chunk. ``--gc-probe SCRIPT`` runs the bridge from SCRIPT, which
reports what it holds on SIGUSR1 (sent at the same moment).

Run: python bench/rss.py [--activations 200000] [--chunk 20000] [--py-spy]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import activations
import stock

from tests import services

#: The bridge under tracemalloc: SIGUSR1 writes a snapshot to the path in argv[1].
TRACED_SERVE = (
    "import signal, sys, tracemalloc\n"
    "tracemalloc.start(int(sys.argv[2]))\n"
    "count = [0]\n"
    "def dump(*_):\n"
    "    count[0] += 1\n"
    "    tracemalloc.take_snapshot().dump(f'{sys.argv[1]}.{count[0]}')\n"
    "    now, peak = tracemalloc.get_traced_memory()\n"
    "    text = f'{now / 2**20:.1f} MB now, {peak / 2**20:.1f} MB peak'\n"
    "    open(f'{sys.argv[1]}.peak', 'w').write(text)\n"
    "signal.signal(signal.SIGUSR1, dump)\n"
    "from bridge.cli import main\n"
    "raise SystemExit(main(['serve']))\n"
)


def status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def mappings(pid: int, top: int = 8) -> list[tuple[str, float]]:
    """The bridge's memory by mapping (file, [heap], or anonymous), largest RSS first."""
    sizes: dict[str, float] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            name = head[5] if len(head) > 5 else "[anonymous]"
        elif head[0] == "Rss:":
            sizes[name] = sizes.get(name, 0.0) + int(head[1]) / 1024
    return sorted(
        ((k.rsplit("/", 1)[-1], round(v, 1)) for k, v in sizes.items()), key=lambda kv: -kv[1]
    )[:top]


def main(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp,
        stock.database(args.db) as (admin_url, _pg, described),
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        port = services.free_port()
        conf = (
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "set_tcp_nodelay true\nmax_queued_messages 100000\n"
        )
        stack.enter_context(services.mosquitto_process(conf, port))
        dsn = asyncio.run(stock.load(admin_url, args.activations))
        print(f"{described}; {args.activations:,} claimed identifiers", flush=True)
        env = {
            **os.environ,
            "BRIDGE_DATABASE_URL": dsn,
            "BRIDGE_MQTT_URL": f"mqtt://127.0.0.1:{port}",
            "BRIDGE_SECRET": os.urandom(32).hex(),
        }
        snap = workdir / "snap"
        argv = [sys.executable, "-m", "bridge", "serve"]
        if args.tracemalloc:
            argv = [sys.executable, "-c", TRACED_SERVE, str(snap), str(args.tracemalloc)]
        if args.gc_probe:
            argv = [sys.executable, args.gc_probe, str(snap)]
        bridge = stack.enter_context(stock.started(argv, env, workdir / "bridge.log", "subscribed"))
        print(f"started: {status(bridge.pid)}", flush=True)
        if args.tracemalloc:
            time.sleep(2)
            os.kill(bridge.pid, signal.SIGUSR1)  # the baseline: subscribed, nothing served
            time.sleep(3)
        bench = stock.Bench(args, "127.0.0.1", port, workdir)
        ids = stock.Identifiers(args.activations)
        done = 0
        while done < args.activations:
            n = min(args.chunk, args.activations - done)
            lines = [stock.request(f"m{done + i}", x) for i, x in enumerate(ids.take(n))]
            spy = None
            if args.py_spy and done == args.chunk:  # the second chunk: steady state
                spy = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(bridge.pid), "--rate", "200",
                     "--nonblocking", "--format", "raw", "--output", str(workdir / "spy.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            if (
                args.tracemalloc or args.gc_probe
            ) and done == 0:  # a snapshot in the middle of the first chunk
                threading.Timer(args.mid, os.kill, (bridge.pid, signal.SIGUSR1)).start()
            _, ok, seconds = bench.c_run("provision", lines, 50, False)
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
                spy.wait()
                print(activations.hot_spots(workdir / "spy.txt", top=40), flush=True)
            done += n
            print(f"{done:>8,} activations ({ok:,} ok, {n / seconds:.0f}/s): {status(bridge.pid)}",
                  flush=True)  # fmt: skip
            if args.tracemalloc and done == n:
                time.sleep(3)  # the snapshot taken in the middle of the chunk is written
        print("largest mappings by RSS (MB):", mappings(bridge.pid), flush=True)
        if args.gc_probe:
            print(snap.read_text() if snap.exists() else "no probe output")
        if args.tracemalloc:
            import tracemalloc

            first = tracemalloc.Snapshot.load(f"{snap}.1")
            last = tracemalloc.Snapshot.load(f"{snap}.2")
            print(f"tracemalloc peak: {Path(f'{snap}.peak').read_text()}")
            total = sum(s.size for s in last.statistics("filename"))
            print(f"tracemalloc: {total / 2**20:.1f} MB traced at the end; growth by line:")
            for stat in last.compare_to(first, "lineno")[:15]:
                print(f"  {stat}")
            print("by file:")
            for stat in last.compare_to(first, "filename")[:10]:
                print(f"  {stat}")


if __name__ == "__main__":
    stock._stop_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default="stock15", help="stock15 or tuned18")
    parser.add_argument("--activations", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=20_000)
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES")
    parser.add_argument("--py-spy", action="store_true", help="profile the second chunk")
    parser.add_argument("--gc-probe", help="a serve script that collects on SIGUSR1")
    parser.add_argument("--mid", type=float, default=4.0, help="tracemalloc: when in chunk 1")
    parser.add_argument("--timeout", type=float, default=300.0)
    main(parser.parse_args())
