"""The command line as a person uses it: real processes, real broker, real database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import asyncpg

from bridge.config import Settings
from bridge.store import definitions, migrations
from tests.conftest import TEST_SECRET
from tests.helpers import RunningBridge


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    assert settings.database_url is not None and settings.mqtt_url is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_DATABASE_URL=settings.database_url.get_secret_value(),
        BRIDGE_MQTT_URL=settings.mqtt_url.get_secret_value(),
        BRIDGE_TOPIC_PREFIX=settings.topic_prefix,
    )
    env.update(extra)
    return env


async def bridge_cli(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def test_approve_claim_show_activate_by_hand(
    settings: Settings, bridge: RunningBridge
) -> None:
    env = _env(settings)
    run = await bridge_cli(
        env, "model", "add", "acme", "thermo-1", "--kind", "mac", "--window", "24h"
    )
    assert run.returncode == 0, run.stderr
    assert "window 86400s" in run.stdout
    run = await bridge_cli(
        env, "approve", "acme", "thermo-1", "00-1a-2b-3c-4d-5e", "00:1A:2B:3C:4D:5F"
    )
    assert run.returncode == 0, run.stderr
    assert "2 added" in run.stdout
    run = await bridge_cli(env, "claim", "acme", "thermo-1", "001a.2b3c.4d5e", "--owner", "alice")
    assert run.returncode == 0, run.stderr
    run = await bridge_cli(env, "show", "acme", "thermo-1", "00:1a:2b:3c:4d:5e", "--json")
    shown = json.loads(run.stdout)
    assert shown["state"] == "claimed" and shown["owner"] == "alice" and shown["window_ends_at"]

    run = await bridge_cli(
        env,
        "activate",
        "--vendor",
        "acme",
        "--model",
        "thermo-1",
        "--identifier",
        "00:1A:2B:3C:4D:5E",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert reply["status"] == "ok" and len(reply["key"]) == 40

    run = await bridge_cli(env, "show", "acme", "thermo-1", "001A2B3C4D5E")
    assert "activated" in run.stdout
    assert reply["key"] not in run.stdout  # show never prints a key

    run = await bridge_cli(
        env,
        "activate",
        "--vendor",
        "acme",
        "--model",
        "thermo-1",
        "--identifier",
        "00:1A:2B:3C:4D:5E",
    )
    assert run.returncode == 1
    assert run.stderr.startswith("error: already_activated: ")


async def test_sealed_activation_from_the_cli(settings: Settings, bridge: RunningBridge) -> None:
    env = _env(settings)
    for args in (
        ("model", "add", "acme", "thermo-1", "--kind", "mac", "--no-claim"),
        ("approve", "acme", "thermo-1", "00:1A:2B:3C:4D:5E"),
    ):
        assert (await bridge_cli(env, *args)).returncode == 0
    run = await bridge_cli(
        env,
        "activate",
        "--vendor",
        "acme",
        "--model",
        "thermo-1",
        "--identifier",
        "001A2B3C4D5E",
        "--seal",
    )
    assert run.returncode == 0, run.stderr
    assert "(was sealed)" in run.stdout


async def test_activate_times_out_with_status_2(settings: Settings) -> None:
    env = _env(settings, BRIDGE_TOPIC_PREFIX="nobody-serves-this")
    run = await bridge_cli(
        env, "activate", "--vendor", "a", "--model", "m", "--identifier", "x", "--timeout", "1"
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error: timeout: ")


async def test_errors_are_one_line_with_code_and_status_1(settings: Settings) -> None:
    env = _env(settings)
    run = await bridge_cli(env, "claim", "acme", "nope", "x", "--owner", "bob")
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "error: unknown_model: The model acme/nope is not registered; "
        "check the vendor and model names."
    )
    run = await bridge_cli(env, "model", "add", "acme", "m", "--kind", "mac", "--window", "5x")
    assert run.returncode == 1
    assert "error: usage: " in run.stderr and "not a duration" in run.stderr


async def test_every_command_has_help(settings: Settings) -> None:
    env = _env(settings)
    for args in (
        ["--help"],
        ["migrate", "--help"],
        ["serve", "--help"],
        ["model", "add", "--help"],
        ["approve", "--help"],
        ["claim", "--help"],
        ["show", "--help"],
        ["activate", "--help"],
    ):
        run = await bridge_cli(env, *args)
        assert run.returncode == 0, (args, run.stderr)
        assert "usage: bridge" in run.stdout


async def test_serve_refuses_to_start_without_a_secret(settings: Settings) -> None:
    run = await bridge_cli(_env(settings), "serve", timeout=30)
    assert run.returncode == 1
    assert run.stderr.startswith("error: config: BRIDGE_SECRET is not set")


async def test_sigterm_stops_serve_cleanly(settings: Settings) -> None:
    env = _env(settings, BRIDGE_SECRET=TEST_SECRET, BRIDGE_CLIENT_ID="sigterm-bridge")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stderr.readline)
            lines.append(line)
            if '"subscribed"' in line or not line:
                break
        assert any('"event": "subscribed"' in x for x in lines), lines
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
        assert code == 0
        assert time.monotonic() - started < 8
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_migrate_is_safe_twice_and_from_two_processes(
    settings: Settings, postgres_url: str
) -> None:
    name = "bridge_migrate_race"
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    if "?" in postgres_url:  # a socket URL keeps its query (host=...)
        base, query = postgres_url.split("?", 1)
        url = base.rsplit("/", 1)[0] + f"/{name}?{query}"
    env = _env(settings, BRIDGE_DATABASE_URL=url)
    first, second = await asyncio.gather(bridge_cli(env, "migrate"), bridge_cli(env, "migrate"))
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    # Each migration takes the lock in its own transaction (a pooler in transaction mode
    # needs that), so two migrators may share the work: every migration exactly once.
    applied: list[str] = []
    for out in (first.stdout, second.stdout):
        line = out.splitlines()[0]
        assert line.startswith("applied "), out
        applied += line.split(": ", 1)[1].split(", ") if ": " in line else []
    expected = [name for _, name, _ in migrations()] + [
        f"functions/{n}" for n, _, _ in definitions()
    ]
    assert sorted(applied) == sorted(expected)
    again = await bridge_cli(env, "migrate")
    assert again.stdout.startswith("applied 0 migration(s)")
    conn = await asyncpg.connect(url)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()
    assert sorted(versions) == [v for v, _, _ in migrations()]
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def test_plaintext_keys_from_the_cli_grant_a_plaintext_activation(
    settings: Settings, bridge: RunningBridge
) -> None:
    """`model add --plaintext-keys` was accepted and ignored (found by the red team)."""
    env = _env(settings)
    added = await bridge_cli(
        env, "model", "add", "acme", "plain-1", "--kind", "mac", "--no-claim", "--plaintext-keys"
    )
    assert added.returncode == 0, added.stderr
    assert "keys sealed or plaintext" in added.stdout
    approved = await bridge_cli(env, "approve", "acme", "plain-1", "00:1A:2B:3C:4D:5F")
    assert approved.returncode == 0, approved.stderr
    run = await bridge_cli(
        env,
        "activate",
        *("--vendor", "acme", "--model", "plain-1", "--identifier", "001A2B3C4D5F"),
        "--plaintext",
    )
    assert run.returncode == 0, run.stderr
    assert "was sealed" not in run.stdout
