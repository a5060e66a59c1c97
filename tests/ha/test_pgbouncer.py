"""The bridge through pgbouncer in transaction pooling mode (Debian 12's pgbouncer 1.18).

Transaction pooling hands a client a server connection for one transaction only. Three
things of the bridge depend on the session and are checked here: asyncpg's named
prepared statements (off with ``pgbouncer=true`` in the DSN), the advisory lock of
``migrate`` (transaction-level, so it is released where it was taken), and the bulk
import's temporary table (``ON COMMIT DROP`` inside its transaction). The bridge uses
no LISTEN.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import asyncpg
import pytest

from bridge.admin import Admin
from bridge.config import Settings, parse_mqtt_url
from bridge.errors import ConfigError
from bridge.store import Store
from tests.ha.cluster import SUPERUSER, SUPERUSER_PASSWORD, PgBouncer, Postgres15
from tests.ha.scenario import (
    MODEL,
    SECRET,
    VENDOR,
    Device,
    activate_until_answered,
    mac_of,
)
from tests.helpers import start_bridge


async def _new_database(pg15: Postgres15) -> str:
    name = f"bouncer_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(pg15.url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


def _through(bouncer: PgBouncer, database: str, flag: str = "?pgbouncer=true") -> str:
    return (
        f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{bouncer.port}/{database}{flag}"
    )


async def _advisory_locks(pg15: Postgres15, database: str) -> int:
    conn = await asyncpg.connect(pg15.url(database))
    try:
        held: int = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    finally:
        await conn.close()
    return held


async def test_bridge_activates_through_pgbouncer_transaction_pooling(
    pg15: Postgres15, pgbouncer: PgBouncer, ha_mqtt_url: str
) -> None:
    database = await _new_database(pg15)
    dsn = _through(pgbouncer, database)

    # Three migrators at once, each with more connections than pgbouncer has servers.
    async def migrate() -> list[str]:
        async with Store.open(dsn, pool_size=3) as store:
            return await store.migrate()

    runs = await asyncio.wait_for(asyncio.gather(migrate(), migrate(), migrate()), 60)
    applied = [name for run in runs for name in run]
    assert sorted(applied) == sorted(set(applied)), "a migration was applied twice"
    assert applied, "no migration was applied"
    assert await _advisory_locks(pg15, database) == 0, "migrate left an advisory lock held"
    async with Store.open(dsn, pool_size=1) as store:
        assert await store.pending_migrations() == []
        assert await store.migrate() == []  # a second run neither blocks nor applies

    settings = Settings(
        database_url=dsn,
        mqtt_url=ha_mqtt_url,
        topic_prefix=f"pgb-{secrets.token_hex(4)}/provision",
        secret=SECRET,
        client_id=f"bridge-pgb-{secrets.token_hex(4)}",
        retry_after_seconds=1,
        state_dir=Path("/nonexistent-state-dir-pgbouncer"),
    )
    async with Admin.connect(settings, actor="pgbouncer-test") as admin:
        await admin.add_model(VENDOR, MODEL, kind="mac", claim_required=False)
        # The bulk path: COPY into a temporary table, inside one transaction.
        report = await admin.approve(VENDOR, MODEL, [mac_of(n) for n in range(60)])
        assert report.added == 60

    bridge = await start_bridge(settings)
    try:
        endpoint = parse_mqtt_url(ha_mqtt_url)
        fleet = [Device(mac_of(n)) for n in range(40)]
        deadline = time.monotonic() + 60
        await asyncio.gather(
            *(activate_until_answered(d, endpoint, settings.topic_prefix, deadline) for d in fleet)
        )
        assert [d.final_code for d in fleet] == ["ok"] * len(fleet)
        assert all(d.unavailable == 0 for d in fleet), "a request met a database error"
        # An identical retry gets the stored reply (same key) through the pooler too.
        again = fleet[0]
        first_key = set(again.keys)
        again.final_code = None
        await activate_until_answered(again, endpoint, settings.topic_prefix, deadline)
        assert again.final_code == "ok" and again.keys == first_key
    finally:
        await bridge.halt()

    async with Admin.connect(settings, actor="pgbouncer-test") as admin:
        for device in fleet:
            (key,) = device.keys
            assert await admin.verify_key(VENDOR, MODEL, device.identifier, key)
    assert await _advisory_locks(pg15, database) == 0


async def test_pgbouncer_without_the_setting_breaks_prepared_statements(
    pg15: Postgres15, pgbouncer: PgBouncer
) -> None:
    """Why the setting exists: asyncpg's statement cache fails behind transaction pooling."""
    database = await _new_database(pg15)

    async def errors(dsn: str) -> int:
        failed = 0
        async with Store.open(dsn, pool_size=6) as store:
            pool = store._pool  # the raw pool: Store would not run such a statement

            async def one(i: int) -> None:
                nonlocal failed
                try:
                    await pool.fetchval(f"SELECT $1::integer + {i % 7}", i)
                except asyncpg.PostgresError:
                    failed += 1

            await asyncio.gather(*(one(i) for i in range(300)))
        return failed

    assert await errors(_through(pgbouncer, database, "")) > 0
    assert await errors(_through(pgbouncer, database, "?pgbouncer=true")) == 0
    assert await errors(_through(pgbouncer, database, "?sslmode=disable&pgbouncer=1")) == 0


async def test_pgbouncer_parameter_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="pgbouncer parameter"):
        async with Store.open("postgresql://u@127.0.0.1:1/db?pgbouncer=maybe", eager=False):
            pass
