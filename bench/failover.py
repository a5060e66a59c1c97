"""Failover figures: a Patroni cluster loses its primary while devices activate.

Starts etcd, three PostgreSQL 15 nodes under Patroni with synchronous replication
(Debian's ``postgresql``, ``patroni`` and ``etcd-server`` packages), a Mosquitto and one
bridge on the multi-host DSN, all on 127.0.0.1, and runs ``tests/ha/scenario.py``:

    python bench/failover.py                 # synchronous_mode_strict (the documented setting)
    python bench/failover.py --not-strict    # synchronous_mode only

Prints time to key with synchronous replication on and off (side by side, same run),
then the failover figures: time without keys, devices answered, keys issued, keys a
device received that the new primary does not know, and duplicate keys. Exits 1 unless
no key was forgotten and none was duplicated. Run as root, PostgreSQL runs as the
``postgres`` user. Everything it starts stops when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import os

from tests import services
from tests.ha.cluster import PatroniCluster
from tests.ha.scenario import run_failover, run_without_standby


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--not-strict", action="store_true", help="synchronous_mode only")
    parser.add_argument("--workers", type=int, default=8, help="devices activating at once")
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--latency-per-round", type=int, default=40)
    parser.add_argument(
        "--no-standby", action="store_true", help="then lose every standby at once, and report"
    )
    args = parser.parse_args()
    logging.getLogger("mqtt").setLevel(logging.WARNING)
    logging.getLogger("bridge").setLevel(logging.ERROR)
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load {tuple(round(x, 2) for x in os.getloadavg())}"
    )
    cluster = PatroniCluster(args.nodes, strict=not args.not_strict)
    try:
        await asyncio.to_thread(cluster.start)
        # The repository's mosquitto.conf sets set_tcp_nodelay: without it Nagle's
        # algorithm adds about 40 ms to every reply and hides the cost being measured.
        port = services.free_port()
        config = services.mosquitto_config(port, "set_tcp_nodelay true\n")
        with services.mosquitto_process(config, port):
            mqtt_url = f"mqtt://127.0.0.1:{port}"
            report = await run_failover(
                cluster,
                mqtt_url,
                workers=args.workers,
                latency_rounds=args.latency_rounds,
                latency_per_round=args.latency_per_round,
                log=functools.partial(print, flush=True),
            )
            lost_all = []
            if args.no_standby:
                lost_all = await run_without_standby(
                    cluster, mqtt_url, log=functools.partial(print, flush=True)
                )
    finally:
        await asyncio.to_thread(cluster.close)
    print()
    for line in report.lines():
        print(line)
    if lost_all:
        print("\nevery standby lost at once:")
        for line in lost_all:
            print("  " + line)
    return 0 if report.forgotten == 0 and report.duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
