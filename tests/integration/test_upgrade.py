"""Operators upgrade in place: a database built and filled by the released bridge
(tests/upgrade/, frozen at bf18123) reaches this version's layout with `bridge migrate`,
nothing lost, and equals a database built fresh by `bridge migrate`."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge import tokens
from bridge.admin import Admin
from bridge.config import Settings
from bridge.errors import Unauthorized
from bridge.store import Store, definitions, migrations
from tests.helpers import activate, start_bridge

FIXTURE = Path(__file__).resolve().parents[1] / "upgrade" / "fixture"
FACTS: dict[str, Any] = json.loads((FIXTURE / "facts.json").read_text())
_TABLES = (
    "models",
    "owners",
    "devices",
    "claims",
    "replies",
    "audit_log",
    "attempt_counters",
    "api_tokens",
    "api_claim_throttle",
    "enrollment_keys",
    "schema_migrations",
)
# The catalog of a database's own objects: what "the same schema" means here.
_CATALOG = {
    "columns": """
        SELECT table_name, ordinal_position, column_name, data_type, column_default,
               is_nullable, is_identity, identity_generation
          FROM information_schema.columns WHERE table_schema = 'public'
         ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
         WHERE schemaname = 'public' ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
         WHERE NOT tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT proname, pg_get_function_identity_arguments(oid), pg_get_function_result(oid),
               prosrc, provolatile,
               (SELECT lanname FROM pg_language l WHERE l.oid = prolang)
          FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "relations": """
        SELECT relname, relkind, reloptions FROM pg_class
         WHERE relnamespace = 'public'::regnamespace ORDER BY 1""",
}


def _url(server: str, name: str) -> str:
    return urlunsplit(urlsplit(server)._replace(path=f"/{name}"))


def _restorable(dump: str) -> str:
    """The dump as one script for any server: psql's meta-commands and the session
    settings dropped, but for the one that lets functions be created before the
    tables their bodies name (the dump's own order)."""
    kept = []
    for line in dump.splitlines():
        if line.startswith(("\\", "SELECT pg_catalog.set_config")):
            continue
        if line.startswith("SET ") and not line.startswith("SET check_function_bodies"):
            continue
        kept.append(line)
    return "\n".join(kept)


async def _database(postgres_url: str, prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop(postgres_url: str, name: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _rows(
    url: str, like: dict[str, list[tuple[Any, ...]]] | None = None
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables. ``like``: rows read before an upgrade, to read the same
    columns (a later migration may add one) and the same migrations' rows (it adds its own)."""
    conn = await asyncpg.connect(url)
    try:
        rows = {}
        for table in _TABLES:
            columns = "*"
            if like is not None:
                names = await conn.fetch(
                    """SELECT column_name FROM information_schema.columns
                        WHERE table_schema = current_schema() AND table_name = $1
                        ORDER BY ordinal_position""",
                    table,
                )
                columns = (
                    ", ".join(r[0] for r in names[: len(like[table][0])]) if like[table] else "*"
                )
            rows[table] = [
                tuple(r) for r in await conn.fetch(f"SELECT {columns} FROM {table} ORDER BY 1, 2")
            ]
        if like is not None:
            released = {r[0] for r in like["schema_migrations"]}
            rows["schema_migrations"] = [r for r in rows["schema_migrations"] if r[0] in released]
        return rows
    finally:
        await conn.close()


async def _catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in _CATALOG.items()}
    finally:
        await conn.close()


async def _bridge_migrate(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_DATABASE_URL"] = url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "migrate",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(["migrate"], proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def released_db(postgres_url: str) -> AsyncIterator[str]:
    """A database restored from the fixture: the released layout and its rows."""
    name = await _database(postgres_url, "bridge_released")
    url = _url(postgres_url, name)
    dump = gzip.decompress((FIXTURE / "database.sql.gz").read_bytes()).decode()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(_restorable(dump))
    finally:
        await conn.close()
    yield url
    await _drop(postgres_url, name)


@pytest.fixture
async def upgraded_db(released_db: str) -> str:
    before = await _rows(released_db)
    result = await _bridge_migrate(released_db)
    assert result.returncode == 0, result.stderr
    # What the released database lacked: later migrations, and every definition file
    # that is new or changed since.
    released = dict(
        line.split("\t") for line in (FIXTURE / "schema_migrations.txt").read_text().splitlines()
    )
    expected = [name for _, name, _ in migrations() if name not in released.values()] + [
        f"functions/{name}"
        for name, digest, _ in definitions()
        if released.get(f"functions/{name}") != digest
    ]
    applied = result.stdout.splitlines()[0].split(": ", 1)[1].split(", ")
    assert sorted(applied) == sorted(expected)
    assert "functions/transitions/activate.sql" in applied
    assert await _rows(released_db, like=before) == before  # the upgrade changed no row
    return released_db


def _settings(url: str, mqtt_url: str) -> Settings:
    return Settings(
        database_url=url,
        mqtt_url=mqtt_url,
        topic_prefix=f"test-{secrets.token_hex(5)}/provision",
        secret=FACTS["secret"],
        client_id=f"bridge-{secrets.token_hex(5)}",
        state_dir="/nonexistent-state-dir-tests-must-not-use-it",
    )


async def test_the_fixture_is_the_released_layout(released_db: str) -> None:
    """What the released bridge left: its migrations, its functions and its rows."""
    conn = await asyncpg.connect(released_db)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        functions = {r[0] for r in await conn.fetch("SELECT proname FROM pg_proc")}
        states = {r[0] for r in await conn.fetch("SELECT DISTINCT state FROM devices")}
        revoked_by = {r[0] for r in await conn.fetch("SELECT revoked_by FROM devices")}
        tallied = await conn.fetchval("SELECT count(*) FROM audit_log WHERE repeats > 0")
    finally:
        await conn.close()
    assert versions == [1, 2, 3, 7, 8, 9, 10]
    assert {"bridge_activate_throttled", "bridge_activate_limited", "bridge_refuse"} <= functions
    assert "audit_log_fill_owner" in functions
    assert states == {"approved", "claimed", "activated", "revoked"}
    assert {"owner", "vendor", "admin"} & revoked_by == {"owner", "admin"}
    assert tallied > 0


async def test_an_upgraded_database_keeps_keys_tokens_and_history(
    upgraded_db: str, mqtt_url: str
) -> None:
    settings = _settings(upgraded_db, mqtt_url)
    async with Admin.connect(settings, actor="test") as admin:
        for reply in FACTS["replies"]:
            device = await admin.show(reply["vendor"], reply["model"], reply["identifier"])
            verified = await admin.verify_key(
                reply["vendor"], reply["model"], reply["identifier"], reply["key"]
            )
            # A key verifies exactly while its device is activated (released, revoked
            # and transferred devices had theirs taken before the upgrade).
            assert verified == (device.state == "activated"), reply["identifier"]
        assert [d.identifier for d in await admin.list_devices("acme", "thermo-1", state="revoked")]
        history = await admin.audit(limit=1000)
        assert len(history) == 60
        for name, token in FACTS["tokens"].items():
            if name == "revoked":
                with pytest.raises(Unauthorized):
                    await tokens.authenticate(admin.store, token["token"])
            else:
                principal = await tokens.authenticate(admin.store, token["token"])
                assert principal.role == token["role"]


async def test_stored_replies_replay_identically_after_the_upgrade(
    upgraded_db: str, mqtt_url: str
) -> None:
    """A device retrying a request it sent before the upgrade gets the same reply."""
    conn = await asyncpg.connect(upgraded_db)
    try:
        # The fixture was made long ago: the upgrade is taken to happen within the grace
        # period of its stored replies.
        await conn.execute("UPDATE replies SET expires_at = now() + interval '1 hour'")
        kept = {r[0] for r in await conn.fetch("SELECT client_id FROM replies")}
    finally:
        await conn.close()
    settings = _settings(upgraded_db, mqtt_url)
    running = await start_bridge(settings)
    try:
        replayed = 0
        for reply in FACTS["replies"]:
            if reply["client_id"] not in kept:
                continue  # its device was released, revoked or re-enabled
            private = reply["private_key"]
            secret = reply.get("device_secret")
            result = await activate(
                settings,
                reply["identifier"],
                vendor=reply["vendor"],
                model=reply["model"],
                client_id=reply["client_id"],
                request_id=reply["request_id"],
                seal=reply["seal"],
                private_key=(
                    X25519PrivateKey.from_private_bytes(bytes.fromhex(private)) if private else None
                ),
                device_secret=bytes.fromhex(secret) if secret else None,
            )
            assert result.reply == reply["reply"]
            assert result.key == reply["key"]
            replayed += 1
    finally:
        await running.halt()
    assert replayed == 4  # two sealed, one plaintext, one with device proof


async def test_an_upgraded_database_activates_and_audits_as_a_fresh_one(
    upgraded_db: str, mqtt_url: str
) -> None:
    """The new activation runs on the old rows: a claimed device activates, and its
    audit entry names its owner (a trigger did that before the upgrade)."""
    settings = _settings(upgraded_db, mqtt_url)
    running = await start_bridge(settings)
    try:
        result = await activate(settings, "00:1A:2B:3C:4D:02", client_id="after-upgrade")
    finally:
        await running.halt()
    assert result.ok, result.reply
    async with Admin.connect(settings, actor="test") as admin:
        entries = await admin.audit(client_id="after-upgrade")
    assert [(e.code, e.owner) for e in entries] == [("ok", "alice")]


async def test_an_upgraded_database_equals_a_fresh_one(upgraded_db: str, postgres_url: str) -> None:
    """Tables, columns, types, defaults, constraints, indexes, triggers, and functions
    (signatures and bodies) of the upgraded database are those of one built fresh."""
    name = await _database(postgres_url, "bridge_fresh")
    fresh = _url(postgres_url, name)
    try:
        result = await _bridge_migrate(fresh)
        assert result.returncode == 0, result.stderr
        upgraded, built = await _catalog(upgraded_db), await _catalog(fresh)
    finally:
        await _drop(postgres_url, name)
    for part in _CATALOG:
        assert upgraded[part], part  # a comparison of nothing would prove nothing
        assert upgraded[part] == built[part], part
    functions = {row[0] for row in upgraded["functions"]}
    assert "bridge_activate" in functions
    gone = {"bridge_activate_throttled", "bridge_activate_limited", "bridge_refuse"}
    assert not functions & (gone | {"audit_log_fill_owner"})


def test_the_dump_restores_on_any_server() -> None:
    """Only the dump's statements are run: no psql meta-command, no server setting."""
    dump = _restorable(gzip.decompress((FIXTURE / "database.sql.gz").read_bytes()).decode())
    assert not re.search(r"^(\\|SET (?!check_function_bodies))", dump, re.MULTILINE)
    assert "INSERT INTO public.devices" in dump


async def test_a_store_opens_on_the_upgraded_database(upgraded_db: str) -> None:
    async with Store.open(upgraded_db, pool_size=1) as store:
        assert await store.pending_migrations() == []
