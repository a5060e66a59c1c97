"""Does the size of the approval list change the cost of an activation? And a reload?

On one PostgreSQL (Debian's 15, stock configuration, as bench/stock.py starts it),
``--connections`` asyncpg connections call the bridge's own activation function back
to back on fresh claimed identifiers (bench/dbceiling.py) for ``--seconds``, on:

- a freshly loaded table of each ``--sizes`` (bulk insert, VACUUM ANALYZE, CHECKPOINT);
- the smallest table again after the reload bench/activations.py does between its runs
  (TRUNCATE devices, replies, claims; the same bulk insert; VACUUM ANALYZE; CHECKPOINT);
- and after the same reload with ``ANALYZE`` of the tables the activation reads
  (replies, claims) too, which TRUNCATE leaves with no statistics.

Each run prints activations/s and PostgreSQL's CPU µs per activation, and the plan
the activation's replay lookup gets.

Run: python bench/tablesize.py [--sizes 10000 1000000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
import dbceiling
import stock
from activations import MODEL, VENDOR, insert_claimed


async def fresh_table(admin_url: str, size: int) -> tuple[str, int]:
    dsn = await stock.load(admin_url, size)
    conn = await asyncpg.connect(dsn)
    try:
        model_id: int = await conn.fetchval(
            "SELECT id FROM models WHERE vendor = $1 AND model = $2", VENDOR, MODEL
        )
    finally:
        await conn.close()
    return dsn, model_id


async def reload(dsn: str, model_id: int, size: int, *, analyze_all: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE devices, replies, claims")
        await insert_claimed(conn, model_id, size)
        await conn.execute("VACUUM (ANALYZE) devices, replies, audit_log")
        if analyze_all:
            await conn.execute("ANALYZE replies, claims")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def plan(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "EXPLAIN SELECT r.sealed_reply FROM replies r JOIN devices rd ON rd.id = r.device_id "
            "WHERE r.client_id = 'x' AND r.request_id = 'y' AND rd.model_id = 1 "
            "AND rd.identifier = 'SN000000001' AND r.expires_at > now()"
        )
        stats = await conn.fetchval(
            "SELECT string_agg(relname || '=' || reltuples::bigint, ' ') FROM pg_class "
            "WHERE relname IN ('devices', 'replies', 'claims')"
        )
    finally:
        await conn.close()
    return " / ".join(r[0].strip() for r in rows[:3]) + f"  [reltuples: {stats}]"


async def measure(
    args: argparse.Namespace, label: str, dsn: str, model_id: int, size: int, pg_pid: int
) -> None:
    ids = stock.Identifiers(size)
    kids = stock._children()
    before = stock.tree_cpu(pg_pid, kids)
    t0 = time.perf_counter()
    result = await dbceiling.run(
        dsn, model_id, lambda: ids.take(1)[0] if ids.next < size else None,
        connections=args.connections, seconds=args.seconds, warmup=0.3,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    used = stock.tree_cpu(pg_pid, stock._children()) - before
    per = 1e6 * used / max(result.completed, 1)
    print(
        f"{label:<34} {result.throughput:7.0f}/s  postgres {per:5.0f} µs/activation"
        f"  ({result.completed:,} in {wall:.1f} s)\n    plan: {await plan(dsn)}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    with stock.database("stock15") as (admin_url, pg_pid, described):
        print(described, flush=True)
        tables = {size: await fresh_table(admin_url, size) for size in args.sizes}
        for size, (dsn, model_id) in tables.items():
            await measure(args, f"{size:,}, freshly loaded", dsn, model_id, size, pg_pid)
        small = min(args.sizes)
        dsn, model_id = tables[small]
        for rep in range(args.repeat):
            await reload(dsn, model_id, small, analyze_all=False)
            await measure(args, f"{small:,}, reloaded ({rep + 1})", dsn, model_id, small, pg_pid)
            await reload(dsn, model_id, small, analyze_all=True)
            await measure(
                args, f"{small:,}, reloaded + ANALYZE ({rep + 1})", dsn, model_id, small, pg_pid
            )


if __name__ == "__main__":
    stock._stop_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
