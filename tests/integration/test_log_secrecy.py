"""The log of a real `bridge serve` after full activations: every field an operator
needs, and never a key, the server secret or the database password."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from tests.helpers import activate
from tests.integration.test_cli import _env

MAC = "00:1A:2B:3C:4D:5E"


@pytest.fixture
async def password_url(settings: Settings, postgres_url: str) -> AsyncIterator[str]:
    """The test database, reached as a role of its own that has a password."""
    assert settings.database_url is not None
    role, password = f"logtest_{secrets.token_hex(4)}", f"pw-{secrets.token_hex(12)}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")
    finally:
        await conn.close()
    parts = urlsplit(settings.database_url.get_secret_value())
    host = parts.netloc.rpartition("@")[2]
    yield urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await conn.close()


async def _until_subscribed(stderr: asyncio.StreamReader, seen: list[str]) -> None:
    while line := (await stderr.readline()).decode():
        seen.append(line)
        if '"event": "subscribed"' in line:
            return
    raise AssertionError("bridge serve exited before subscribing:\n" + "".join(seen))


async def test_activation_log_has_fields_and_no_secrets(
    settings: Settings, admin: Admin, password_url: str
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC, "00:1A:2B:3C:4D:5F"])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    await admin.claim("acme", "thermo-1", "00:1A:2B:3C:4D:5F", owner="bob")
    server_secret = secrets.token_hex(32)
    password = urlsplit(password_url).password
    assert password
    env = _env(settings, BRIDGE_DATABASE_URL=password_url, BRIDGE_SECRET=server_secret)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(_until_subscribed(proc.stderr, lines), timeout=30)
        plain = await activate(settings, MAC, request_id="req-plain-1")
        sealed = await activate(settings, "00-1a-2b-3c-4d-5f", seal=True, request_id="req-sealed")
        again = await activate(settings, MAC, request_id="req-plain-1", client_id="device-x")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), timeout=30)
        assert await proc.wait() == 0
    log = "".join(lines) + rest.decode()
    assert plain.ok and sealed.ok and plain.key and sealed.key
    assert again.reply["code"] == "already_activated"

    for secret in (plain.key, sealed.key, server_secret, password):
        assert secret.lower() not in log.lower()
    assert password_url not in log

    records: list[dict[str, Any]] = [json.loads(line) for line in log.splitlines()]
    activations = [r for r in records if r.get("event") == "activation"]
    assert len(activations) == 3
    first = next(r for r in activations if r["request_id"] == "req-plain-1")
    assert first["outcome"] == "ok"
    assert first["identifier"] == "001A2B3C4D5E"
    assert first["client_id"].startswith("device-")
    assert isinstance(first["duration_ms"], float | int) and first["duration_ms"] >= 0
    assert {r["outcome"] for r in activations} == {"ok", "already_activated"}
