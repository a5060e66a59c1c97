"""How the claim step's "did you mean …?" lookup scales with the approval list.

Loads N approved serial numbers for one model into a throwaway embedded PostgreSQL (or
BRIDGE_DATABASE_URL), then times the exact statement the claim step runs
(Store.lookalikes: an equality probe on the (model_id, lookalike) index) and prints
its EXPLAIN ANALYZE. Run: python bench/lookalike.py --rows 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg
import services  # bench/services.py: the bench's throwaway PostgreSQL

from bridge import identifiers
from bridge.store import Store


async def main(rows: int, probes: int) -> None:
    with services.postgres() as (url, _pid):
        await _measure(url, rows, probes)


async def _measure(url: str, rows: int, probes: int) -> None:
    async with Store.open(url, pool_size=2) as store:
        await store.migrate()
        conn = await asyncpg.connect(url)
        name = f"m{time.time_ns()}"
        model_id = await conn.fetchval(
            "INSERT INTO models (vendor, model, kind) VALUES ('bench', $1, 'serial') RETURNING id",
            name,
        )
        started = time.perf_counter()
        # The same fold as identifiers.lookalike_key, done in SQL for a fast bulk load.
        await conn.execute(
            """INSERT INTO devices (model_id, identifier, lookalike)
               SELECT $1, s, translate(s, 'OILSBZG', '0115826')
                 FROM (SELECT 'SN' || lpad(i::text, 9, '0') || 'BZ' AS s
                         FROM generate_series(1, $2) AS i) g""",
            model_id,
            rows,
        )
        await conn.execute("ANALYZE devices")
        load = time.perf_counter() - started
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('devices'))")
        index = await conn.fetchval("SELECT pg_size_pretty(pg_relation_size('devices_lookalike'))")
        model = await store.get_model("bench", name)
        assert model is not None
        # A typo of a real row: O for 0 in the middle; the fold finds it.
        typed = [
            f"SN{n:09d}BZ".replace("0", "O", 1) for n in range(1, rows, max(1, rows // probes))
        ]
        timings = []
        found = 0
        for text in typed[:probes]:
            t0 = time.perf_counter()
            hits = await store.lookalikes(model, identifiers.lookalike_key("serial", text))
            timings.append((time.perf_counter() - t0) * 1000)
            found += any(identifiers.suggestion_ok(text, h) for h in hits)
        plan = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT identifier FROM devices "
            "WHERE model_id = $1 AND lookalike = $2 LIMIT 5",
            model_id,
            identifiers.lookalike_key("serial", typed[0]),
        )
        await conn.close()
    timings.sort()
    print(f"approved rows:         {rows:,} (loaded in {load:.1f} s)")
    print(f"devices table+indexes: {size}; devices_lookalike index: {index}")
    print(f"lookups:               {len(timings)}, suggestion found for {found}")
    print(
        f"lookup latency (ms):   median {statistics.median(timings):.3f}, "
        f"p99 {timings[int(len(timings) * 0.99) - 1]:.3f}, max {timings[-1]:.3f}"
    )
    print("EXPLAIN ANALYZE:")
    for row in plan:
        print("   ", row[0])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="approved identifiers (default 1e6)"
    )
    parser.add_argument("--probes", type=int, default=1000, help="lookups to time (default 1000)")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.probes))
