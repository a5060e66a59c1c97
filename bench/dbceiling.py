"""The database ceiling: the bridge's own activation statement, pgbench-style.

N asyncpg connections each run the bridge's ``bridge_activate(...)`` statement back to back on
fresh claimed identifiers, with arguments shaped like the bridge's (a 32-byte key hash,
a sealed reply of the size the bridge stores), through the same prepared statement
asyncpg caches for the bridge. Every call is its own transaction and is committed with
synchronous_commit on, as in the bridge. What is left is what PostgreSQL on this
machine allows: no MQTT, no JSON, no Python work beyond the driver.
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
from loadgen import Identifiers, RunResult

from bridge.db.activations import ACTIVATE_STATEMENT as STATEMENT  # the bridge's own
from bridge.db.activations import statement_arguments
from bridge.records import Activation, AuditTally, RateLimit

# The bridge's defaults: the throttle, the audit tally, and no device logins (the bench
# broker gives none).
_LIMIT, _TALLY = RateLimit(), AuditTally()
REPLY_BYTES = 12 + 16 + 170  # nonce + tag + a plain-key reply of protocol v1


def bench_activation(
    model_id: int, identifier: str, client_id: str, request_id: str, key_hash: bytes, reply: bytes
) -> Activation:
    """One activation's arguments as the bridge would send them (its default limits)."""
    return Activation(
        client_id=client_id,
        client_limit=_LIMIT.failures,
        device_logins=False,
        grace_seconds=600,
        identifier=identifier,
        identifier_limit=_LIMIT.identifier_failures,
        key_hash=key_hash,
        key_id="benchkeyid",
        model_id=model_id,
        model_limit=_LIMIT.model_failures,
        presented=identifier,
        reply=reply,
        request_id=request_id,
        window_seconds=_LIMIT.window_seconds,
    )


async def run(
    dsn: str,
    model_id: int,
    identifiers: Identifiers,
    *,
    connections: int,
    seconds: float,
    warmup: float = 1.0,
) -> RunResult:
    result = RunResult("db", "closed", connections)
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    key_hash, reply = os.urandom(32), os.urandom(REPLY_BYTES)
    started = time.perf_counter()
    measure_from = started + warmup
    deadline = measure_from + seconds
    last_done = measure_from

    async def worker(n: int, conn: asyncpg.Connection) -> None:
        nonlocal last_done
        sent_count = 0
        while time.perf_counter() < deadline:
            identifier = identifiers()
            if identifier is None:
                return
            sent_count += 1
            activation = bench_activation(
                model_id, identifier, f"bench-db-{n}", f"r{sent_count}", key_hash, reply
            )
            arguments = statement_arguments(activation, _TALLY)
            sent = time.perf_counter()
            row = await conn.fetchrow(STATEMENT, *arguments)
            done = time.perf_counter()
            result.completed += 1
            if sent >= measure_from:
                code = row["code"] if row is not None else "no_row"
                result.codes[code] += 1
                if code == "ok":
                    result.latencies.append(done - sent)
                last_done = max(last_done, done)

    try:
        await asyncio.gather(*(worker(n, c) for n, c in enumerate(conns)))
    finally:
        for conn in conns:
            await conn.close()
    result.elapsed = last_done - measure_from
    return result
