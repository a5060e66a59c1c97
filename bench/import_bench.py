"""Benchmark: approve 1,000,000 MAC addresses from a file, through the admin API and COPY.

A program, not a test: it prints figures and never fails a build. It uses
BRIDGE_DATABASE_URL when set (a model with a random name is added there), or
else a throwaway embedded PostgreSQL that is deleted afterwards::

    python bench/import_bench.py                  # 1,000,000 lines, mixed spellings
    python bench/import_bench.py --range          # one FIRST..LAST row instead
    python bench/import_bench.py --count 200000

The time measured is the whole of ``Admin.approve_file``: reading and
normalizing every line, COPY into a staging table, the INSERT ... ON CONFLICT
into the devices table with its indexes, one audit row per identifier, commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

import services  # bench/services.py: the bench's throwaway PostgreSQL

from bridge.admin import Admin
from bridge.config import load_settings
from bridge.store import Store


def write_file(path: Path, count: int, *, as_range: bool) -> int:
    """The identifiers file; returns the first MAC as an integer."""
    base = secrets.randbelow(2**47) & ~0xFFFFFF  # a random block, to rerun on one database
    if as_range:
        path.write_text(f"{_spell(base, 0)}..{_spell(base + count - 1, 0)}\n")
        return base
    with path.open("w") as f:
        # Mixed spellings, as vendors' files come: every line goes through the parser.
        f.writelines(_spell(base + n, n % 3) + "\n" for n in range(count))
    return base


def _spell(value: int, style: int) -> str:
    raw = f"{value:012X}"
    if style == 0:
        return ":".join(raw[i : i + 2] for i in range(0, 12, 2))
    if style == 1:
        return "-".join(raw[i : i + 2] for i in range(0, 12, 2)).lower()
    return ".".join(raw[i : i + 4] for i in range(0, 12, 4)).lower()


async def run(count: int, *, as_range: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp, services.postgres() as (url, _pid):
        path = Path(tmp) / "numbers.txt"
        started = time.perf_counter()
        write_file(path, count, as_range=as_range)
        print(f"generated {count:,} MAC addresses in {time.perf_counter() - started:.1f} s")
        settings = load_settings(database_url=url)
        async with Store.open(url, pool_size=1) as store:
            await store.migrate()
        model = f"bench-{secrets.token_hex(4)}"
        async with Admin.connect(settings, actor="bench") as admin:
            await admin.add_model("bench", model, kind="mac")
            load = os.getloadavg()[0]
            started = time.perf_counter()
            report = await admin.approve_file("bench", model, path)
            elapsed = time.perf_counter() - started
        print(
            f"imported {report.added:,} identifiers "
            f"({report.already:,} already approved, {len(report.refused)} refused) "
            f"in {elapsed:.1f} s: {report.added / elapsed:,.0f} rows/s"
        )
        source = "one range row" if as_range else f"{count:,} lines"
        print(
            f"source: {source}; {os.cpu_count()} CPUs, load average {load:.1f} at the start "
            "(a shared machine: expect noise)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--range", action="store_true", help="one FIRST..LAST row")
    args = parser.parse_args()
    asyncio.run(run(args.count, as_range=args.range))


if __name__ == "__main__":
    main()
