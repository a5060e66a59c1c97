"""Enrollment keys, device secrets, sealed activation and weak server secrets, by hand.

Every command is a real `bridge` process against the real broker and database.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.config import DEV_SECRET, Settings
from tests.conftest import TEST_SECRET
from tests.helpers import RunningBridge
from tests.integration.test_cli import _env, bridge_cli

MAC = "00:1A:2B:3C:4D:5E"


async def _ok(env: dict[str, str], *args: str) -> str:
    run = await bridge_cli(env, *args)
    assert run.returncode == 0, (args, run.stderr)
    return run.stdout


async def test_device_proof_by_hand(
    settings: Settings, bridge: RunningBridge, tmp_path: Path
) -> None:
    env = _env(settings, BRIDGE_SECRET=TEST_SECRET)
    added = await _ok(env, "model", "add", "acme", "lock-9", "--kind", "mac")
    assert "keys sealed only" in added
    created = await _ok(env, "enrollment-key", "create", "acme", "lock-9")
    assert "generation 1" in created and "require device proof" in created
    await _ok(env, "approve", "acme", "lock-9", MAC)
    await _ok(env, "claim", "acme", "lock-9", MAC, "--owner", "alice")

    # Only the secret on stdout, the same for every spelling of the number.
    printed = await bridge_cli(env, "device-secret", "acme", "lock-9", "00-1a-2b-3c-4d-5e")
    assert printed.returncode == 0, printed.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", printed.stdout) and printed.stderr == ""
    secret = printed.stdout.strip()
    assert await _ok(env, "device-secret", "acme", "lock-9", "001A.2B3C.4D5E") == printed.stdout
    secret_file = tmp_path / "device.secret"
    secret_file.write_text(printed.stdout)

    args = ("activate", "--vendor", "acme", "--model", "lock-9", "--identifier", MAC)
    guess = await bridge_cli(env, *args, "--client-id", "dev-1")
    assert guess.returncode == 1
    assert guess.stderr.startswith("error: not_approved: The MAC address 00:1A:2B:3C:4D:5E is not")
    plain = await bridge_cli(env, *args, "--client-id", "dev-1", "--plaintext")
    assert plain.returncode == 1 and plain.stderr.startswith("error: seal_required: ")
    done = await bridge_cli(
        env, *args, "--client-id", "dev-1", "--device-secret-file", str(secret_file)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: acme/lock-9 001A2B3C4D5E") and "(was sealed)" in done.stdout
    for output in (added, created, guess.stderr, done.stdout, done.stderr):
        assert secret not in output

    rotated = await _ok(env, "enrollment-key", "rotate", "acme", "lock-9")
    assert "generation 2" in rotated and "previous generations stay accepted" in rotated
    assert await _ok(env, "device-secret", "acme", "lock-9", MAC) != printed.stdout
    listed = await _ok(env, "enrollment-key", "list", "acme", "lock-9")
    assert re.search(r"generation 2 .* accepted\ngeneration 1 .* accepted", listed), listed
    retired = await _ok(env, "enrollment-key", "retire", "acme", "lock-9", "1")
    assert "retired enrollment key generation 1" in retired
    newest = await bridge_cli(env, "enrollment-key", "retire", "acme", "lock-9", "2")
    assert newest.returncode == 1 and "is the newest" in newest.stderr
    audit = await _ok(env, "audit", "--vendor", "acme", "--model", "lock-9")
    for action in ("enrollment_key_create", "enrollment_key_rotate", "device_secret"):
        assert action in audit
    assert secret not in audit


async def test_device_secret_needs_the_bridges_own_secret(
    settings: Settings, bridge: RunningBridge
) -> None:
    env = _env(settings, BRIDGE_SECRET=TEST_SECRET)
    await _ok(env, "model", "add", "acme", "lock-9", "--kind", "mac")
    no_key = await bridge_cli(env, "device-secret", "acme", "lock-9", MAC)
    assert no_key.returncode == 1 and "has no enrollment key; create one first" in no_key.stderr
    await _ok(env, "enrollment-key", "create", "acme", "lock-9")
    again = await bridge_cli(env, "enrollment-key", "create", "acme", "lock-9")
    assert again.returncode == 1 and "rotate it instead" in again.stderr

    unset = await bridge_cli(_env(settings), "device-secret", "acme", "lock-9", MAC)
    assert unset.returncode == 1
    assert unset.stderr.startswith("error: config: BRIDGE_SECRET is not set")
    other = await bridge_cli(_env(settings), "device-secret", "--dev", "acme", "lock-9", MAC)
    assert other.returncode == 1 and "encrypted under another server secret" in other.stderr
    assert other.stdout == ""


async def test_a_bad_device_secret_file_is_refused_without_echoing_it(
    settings: Settings, tmp_path: Path
) -> None:
    secret_file = tmp_path / "device.secret"
    secret_file.write_text("ab" * 31 + "zz\n")  # nearly a secret: never echoed
    run = await bridge_cli(
        _env(settings),
        "activate",
        *("--vendor", "acme", "--model", "lock-9", "--identifier", MAC),
        *("--device-secret-file", str(secret_file)),
    )
    assert run.returncode == 1
    assert run.stderr.startswith("error: malformed: The device secret file ")
    assert "must hold the 64 hex characters" in run.stderr and "abab" not in run.stderr


async def test_new_commands_have_help(settings: Settings) -> None:
    env = _env(settings)
    for args, says in (
        (["enrollment-key", "--help"], "device proof"),
        (["enrollment-key", "create", "--help"], "before the first device"),
        (["enrollment-key", "rotate", "--help"], "--retire-previous"),
        (["enrollment-key", "retire", "--help"], "GENERATION"),
        (["enrollment-key", "list", "--help"], "newest first"),
        (["device-secret", "--help"], "factory line"),
        (["model", "add", "--help"], "--plaintext-keys"),
        (["activate", "--help"], "--device-secret-file"),
    ):
        run = await bridge_cli(env, *args)
        assert run.returncode == 0, (args, run.stderr)
        assert "usage: bridge" in run.stdout
        assert says in " ".join(run.stdout.split()), (args, run.stdout)


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("short", "BRIDGE_SECRET is 5 bytes long; it must be at least 32 bytes"),
        ("x" * 31, "BRIDGE_SECRET is 31 bytes long"),
        (DEV_SECRET, "BRIDGE_SECRET is a value published in this project's repository"),
        (
            "replace-with-64-hex-characters-from-python3-c-import-secrets-token_hex-32",
            "BRIDGE_SECRET is a value published in this project's repository",
        ),
    ],
)
async def test_attack_serve_with_a_weak_secret_is_refused(
    settings: Settings, secret: str, says: str
) -> None:
    run = await bridge_cli(_env(settings, BRIDGE_SECRET=secret), "serve", timeout=30)
    assert run.returncode == 1
    assert run.stderr.startswith(f"error: config: {says}"), run.stderr
    assert "secrets.token_urlsafe(32)" in run.stderr
    assert secret not in run.stderr


async def test_serve_dev_takes_a_weak_secret(settings: Settings) -> None:
    env = _env(settings, BRIDGE_SECRET="short", BRIDGE_CLIENT_ID="weak-dev-bridge")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--dev"],
        env=env,
        stdout=subprocess.DEVNULL,
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
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
