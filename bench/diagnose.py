"""How long a support diagnosis takes at a large vendor's scale.

Builds, in a throwaway embedded PostgreSQL (or BRIDGE_DATABASE_URL, a scratch database
that this program fills), a vendor with --approved approved MAC addresses (one in ten
claimed, half of those activated, a hole every 1,000 numbers) and --audit audit rows
(one approval per number, the claims, successful activations, and device failures of
every kind spread over 30 days, some without a readable number, and a flood of 20,000
tallied attempt rows on one claimed number), with generate_series,
indexes built after the load. Then it times Admin.diagnose end to end (every statement
and the Python verdict) on numbers of each kind of case, prints the median and p99 per
case and overall, and the EXPLAIN ANALYZE plan of each statement a diagnosis runs.

    python bench/diagnose.py                       # 1,000,000 numbers, 10,000,000 rows
    python bench/diagnose.py --approved 100000 --audit 1000000 --samples 50
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import services  # bench/services.py: the bench's throwaway PostgreSQL

from bridge import diagnosis, identifiers
from bridge.admin import Admin
from bridge.config import Settings
from bridge.db import diagnosis as q
from bridge.store import Store

# Indexes of the audit log and devices, dropped for the load and rebuilt after it
# (the plans are read on the rebuilt ones, as a database that grew would have them).
_AUDIT_INDEXES = [
    "audit_log_at",
    "audit_log_identifier",
    "audit_log_client",
    "audit_log_owner",
    "audit_log_model",
    "audit_log_code",
    "audit_log_unreadable",
    "audit_log_lifecycle",
    "audit_log_owner_lifecycle",
]
#: Tallied attempt rows an attacker wrote with one claimed number (1,000 client ids a
#: window, over 20 windows): more than a timeline shows.
FLOOD_ROWS = 20_000


def _flooded(approved: int) -> int:
    # A claimed number that has not activated (i % 10 == 0, i % 20 == 10).
    return approved // 2 // 20 * 20 + 10


def _mac(n: int) -> str:
    return f"{n:012X}"


async def build(conn: asyncpg.Connection, approved: int, audit: int) -> dict[str, float]:
    took: dict[str, float] = {}
    definitions = {
        r["indexname"]: r["indexdef"]
        for r in await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY($1::text[])",
            _AUDIT_INDEXES,
        )
    }
    # A scratch database: skip the audit log's triggers (the owner is written directly).
    await conn.execute("SET session_replication_role = replica")
    for name in _AUDIT_INDEXES:
        await conn.execute(f"DROP INDEX IF EXISTS {name}")
    await conn.execute(
        """INSERT INTO models (vendor, model, kind) VALUES
           ('acme', 'thermo-1', 'mac'), ('acme', 'thermo-2', 'mac'), ('acme', 'plug-3', 'serial')"""
    )
    t0 = time.perf_counter()
    await conn.execute(
        "INSERT INTO owners (name) SELECT 'owner-' || i FROM generate_series(1, 10000) i"
    )
    # Numbers 1..N, every 1,000th left out (a range's missing number). One in ten is
    # claimed (12 h ago, its window open 12 h more), half of those activated.
    await conn.execute(
        """INSERT INTO devices (model_id, identifier, lookalike, approved_at, owner_id, state,
                                window_ends_at, activated_at, client_id)
           SELECT 1, x, translate(x, 'B', '8'), now() - interval '40 days',
                  CASE WHEN i % 10 = 0 THEN (i / 10) % 10000 + 1 END,
                  CASE WHEN i % 20 = 0 THEN 'activated' WHEN i % 10 = 0 THEN 'claimed'
                       ELSE 'approved' END,
                  CASE WHEN i % 10 = 0 AND i % 20 <> 0 THEN now() + interval '12 hours' END,
                  CASE WHEN i % 20 = 0 THEN now() - interval '11 hours' END,
                  CASE WHEN i % 20 = 0 THEN 'dev-' || i END
             FROM (SELECT i, upper(lpad(to_hex(i), 12, '0')) AS x
                     FROM generate_series(1, $1::bigint) i WHERE i % 1000 <> 500) g""",
        approved,
    )
    await conn.execute(
        """INSERT INTO claims (device_id, owner_id, claimed_at)
           SELECT id, owner_id, now() - interval '12 hours' FROM devices
            WHERE owner_id IS NOT NULL"""
    )
    took["devices"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    await conn.execute(
        """INSERT INTO audit_log (at, action, code, actor, vendor, model, identifier)
           SELECT approved_at, 'approve', 'ok', 'cli:bench', 'acme', 'thermo-1', identifier
             FROM devices WHERE model_id = 1"""
    )
    await conn.execute(
        """INSERT INTO audit_log (at, action, code, actor, vendor, model, identifier, owner,
                                  detail)
           SELECT now() - interval '12 hours', 'claim', 'ok', 'api:owner', 'acme', 'thermo-1',
                  d.identifier, o.name, 'owner=' || o.name
             FROM devices d JOIN owners o ON o.id = d.owner_id"""
    )
    await conn.execute(
        """INSERT INTO audit_log (at, action, code, actor, client_id, request_id, vendor, model,
                                  identifier_presented, identifier, owner)
           SELECT d.activated_at, 'activate', 'ok', 'device', d.client_id, 'r1', 'acme',
                  'thermo-1', d.identifier, d.identifier, o.name
             FROM devices d JOIN owners o ON o.id = d.owner_id WHERE d.state = 'activated'"""
    )
    done = await conn.fetchval("SELECT count(*) FROM audit_log")
    rest = max(0, audit - done)
    # Device failures over 30 days, tallied as the bridge tallies them: one row per
    # client id, code and hour with a repeat count. Most carry numbers that are not
    # approved (guesses, typos in firmware), 2% no readable number at all.
    batch = 2_000_000
    for start in range(0, rest, batch):
        await conn.execute(
            """INSERT INTO audit_log (at, action, code, actor, client_id, request_id, vendor,
                                      model, identifier_presented, identifier, detail,
                                      repeats, last_at)
               SELECT t, 'activate', c, 'device', 'c-' || (i % 500000), 'r' || i, 'acme',
                      'thermo-1',
                      CASE WHEN c = 'invalid_identifier' THEN 'SN-' || i ELSE x END,
                      CASE WHEN c = 'invalid_identifier' THEN NULL ELSE x END,
                      NULL, i % 3, t + interval '10 minutes'
                 FROM (SELECT i,
                              now() - (i % 2592000) * interval '1 second' AS t,
                              upper(lpad(to_hex((i * 7919) % ($2::bigint * 4) + 1), 12, '0'))
                                  AS x,
                              (ARRAY['not_approved', 'not_approved', 'not_approved',
                                     'window_expired', 'already_activated', 'rate_limited',
                                     'not_claimed', 'not_approved', 'not_approved',
                                     'not_approved'])[1 + i % 10] AS c0,
                              i % 50 = 7 AS unreadable
                         FROM generate_series($1::bigint, $1::bigint + $3::bigint - 1) i) g,
                      LATERAL (SELECT CASE WHEN unreadable THEN 'invalid_identifier'
                                           ELSE c0 END AS c) k""",
            start,
            approved,
            min(batch, rest - start),
        )
    # One claimed number flooded by an attacker: its timeline still shows its claim.
    await conn.execute(
        """INSERT INTO audit_log (at, action, code, actor, client_id, request_id, vendor,
                                  model, identifier_presented, identifier, repeats, last_at,
                                  owner)
           SELECT now() - (i / 1000) * interval '1 hour', 'activate', 'rate_limited',
                  'device', 'flood-' || (i % 1000), 'f' || i, 'acme', 'thermo-1', d.identifier,
                  d.identifier, 2, now() - (i / 1000) * interval '1 hour' + interval '5 minutes',
                  o.name
             FROM devices d JOIN owners o ON o.id = d.owner_id,
                  generate_series(0, $2::integer - 1) i
            WHERE d.model_id = 1 AND d.identifier = $1""",
        _mac(_flooded(approved)),
        FLOOD_ROWS,
    )
    took["audit_rows"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '256MB'")
    for name in _AUDIT_INDEXES:
        if name in definitions:
            await conn.execute(definitions[name])
    await conn.execute("ANALYZE")
    took["indexes"] = time.perf_counter() - t0
    return took


def _cases(
    approved: int, samples: int, rng: random.Random
) -> dict[str, list[tuple[str, str | None]]]:
    """(typed number, asking) per case, drawn from the generated data's shape."""

    def ids(pred: object, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            i = rng.randrange(1, approved)
            if pred(i):  # type: ignore[operator]
                out.append(i)
        return out

    return {
        "claimed, not activated": [
            (_mac(i), None) for i in ids(lambda i: i % 10 == 0 and i % 20 != 0, samples)
        ],
        "fine (activated)": [
            (_mac(i), None) for i in ids(lambda i: i % 20 == 0 and i % 1000 != 500, samples)
        ],
        f"claimed, {FLOOD_ROWS:,} attempt rows": [
            (_mac(_flooded(approved)), None) for _ in range(samples)
        ],
        "claimed by another": [
            (_mac(i), "owner-x") for i in ids(lambda i: i % 10 == 0 and i % 20 != 0, samples)
        ],
        "not approved (hole in a range)": [
            (_mac(i), None) for i in ids(lambda i: i % 1000 == 500, samples)
        ],
        "typo (not a MAC address)": [
            (_mac(i)[:-1], None) for i in ids(lambda i: i % 10 == 3, samples)
        ],
        "beyond every range": [(_mac(approved * 8 + i), None) for i in range(samples)],
    }


async def measure(url: str, approved: int, audit: int, samples: int) -> None:
    async with Store.open(url, pool_size=4) as store:
        await store.migrate()
        conn = await asyncpg.connect(url)
        try:
            if await conn.fetchval("SELECT count(*) FROM devices") == 0:
                took = await build(conn, approved, audit)
                print("built in " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()))
            sizes = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM devices) AS devices,
                          (SELECT count(*) FROM audit_log) AS audit,
                          pg_size_pretty(pg_total_relation_size('audit_log')) AS audit_size,
                          pg_size_pretty(pg_total_relation_size('devices')) AS devices_size"""
            )
            assert sizes is not None
            print(
                f"data: {sizes['devices']:,} approved numbers ({sizes['devices_size']}), "
                f"{sizes['audit']:,} audit rows ({sizes['audit_size']})"
            )
            settings = Settings(database_url=url, state_dir="/nonexistent")
            admin = Admin(store, settings=settings, actor="bench")
            rng = random.Random(18)
            everything: list[float] = []
            print(f"\n{'case':<32} {'verdict':<16} {'median':>8} {'p99':>8}  (ms, n={samples})")
            for case, numbers in _cases(approved, samples, rng).items():
                timings = []
                verdicts: set[str] = set()
                for typed, asking in numbers:
                    t0 = time.perf_counter()
                    found = await admin.diagnose("acme", "thermo-1", typed, asking=asking)
                    timings.append((time.perf_counter() - t0) * 1000)
                    verdicts.add(found.verdict.value)
                everything += timings
                print(
                    f"{case:<32} {','.join(sorted(verdicts)):<16} "
                    f"{statistics.median(timings):8.2f} {_p99(timings):8.2f}"
                )
            print(
                f"{'all':<32} {'':<16} {statistics.median(everything):8.2f} {_p99(everything):8.2f}"
            )
            await _plans(conn, approved)
        finally:
            await conn.close()


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _plans(conn: asyncpg.Connection, approved: int) -> None:
    claimed = _mac(_flooded(approved))
    owner = await conn.fetchval(
        "SELECT o.name FROM devices d JOIN owners o ON o.id = d.owner_id"
        " WHERE d.model_id = 1 AND d.identifier = $1",
        claimed,
    )
    hole = _mac(approved // 2 // 1000 * 1000 + 500)
    typed = _mac(approved // 2 + 3)[:-1]
    now = datetime.now(UTC)
    statements = {
        "device": (q.DEVICE, 1, claimed),
        "timeline (flooded)": (
            q.TIMELINE,
            claimed,
            "acme",
            "thermo-1",
            q.LIFECYCLE_LIMIT,
            q.ATTEMPT_LIMIT,
        ),
        "older attempts (flooded)": (
            q.OLDER_ATTEMPTS,
            claimed,
            "acme",
            "thermo-1",
            q.ATTEMPT_LIMIT,
            q.OLDER_COUNTED,
        ),
        "owner history (flooded)": (q.OWNER_HISTORY, owner, 50),
        "approved_among (typo)": (
            q.APPROVED_AMONG,
            1,
            list(diagnosis.near_misses("mac", typed)),
            identifiers.lookalike_key("mac", typed),
        ),
        "below (range)": (q.BELOW, 1, hole, q.RANGE_READ),
        "above (range)": (q.ABOVE, 1, hole, q.RANGE_READ),
        "near-miss attempts in the window": (
            q.NEAR_ATTEMPTS,
            list(diagnosis.near_misses("mac", claimed)),
            "acme",
            "thermo-1",
            now - timedelta(hours=13),
            now,
            now - timedelta(hours=12),
        ),
        "unreadable attempts in the window": (
            q.UNREADABLE_ATTEMPTS,
            "acme",
            "thermo-1",
            now - timedelta(hours=13),
            now,
            now - timedelta(hours=12),
            q.UNREADABLE_LIMIT,
        ),
    }
    for name, (sql, *args) in statements.items():
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", *args)
        print(f"\n-- {name}")
        for r in rows:
            print(r[0])
        # After five runs of a prepared statement PostgreSQL may keep one plan for every
        # parameter value: it must find the rows through the same indexes.
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE generic AS {sql}")
        literals = [await _literal(conn, a) for a in args]
        generic = await conn.fetch(
            f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE generic({', '.join(literals)})"
        )
        await conn.execute("DEALLOCATE generic; RESET plan_cache_mode")
        print(f"-- {name}: its generic plan (what a cached statement may run)")
        for r in generic:
            print(r[0])


async def _literal(conn: asyncpg.Connection, value: object) -> str:
    # EXECUTE takes no bound parameters: each value is spelled as a typed literal.
    kind = (
        "text[]"
        if isinstance(value, list)
        else "timestamptz"
        if isinstance(value, datetime)
        else "bigint"
        if isinstance(value, int)
        else "text"
    )
    quoted = await conn.fetchval(f"SELECT quote_literal($1::{kind}::text)", value)
    return f"{quoted}::{kind}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--approved", type=int, default=1_000_000)
    parser.add_argument("--audit", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=200, help="diagnoses per case")
    args = parser.parse_args()
    with services.postgres() as (url, _pid):
        asyncio.run(measure(url, args.approved, args.audit, args.samples))


if __name__ == "__main__":
    main()
