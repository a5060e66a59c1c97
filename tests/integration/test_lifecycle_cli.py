"""The lifecycle commands as a person types them: real processes, broker and database."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from bridge.config import Settings
from tests.helpers import RunningBridge, activate
from tests.integration.test_cli import _env, bridge_cli

MAC = "00:1A:2B:3C:4D:5E"


async def _ok(env: dict[str, str], *args: str) -> str:
    run = await bridge_cli(env, *args)
    assert run.returncode == 0, (args, run.stderr)
    return run.stdout


async def _refused(env: dict[str, str], code: str, *args: str) -> str:
    run = await bridge_cli(env, *args)
    assert run.returncode == 1, (args, run.stdout)
    assert run.stderr.startswith(f"error: {code}: "), run.stderr
    assert run.stderr.count("\n") == 1  # one sentence, one line
    return run.stderr


async def test_approve_file_reports_refused_lines_and_dry_run_writes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    env = _env(settings)
    await _ok(env, "model", "add", "acme", "thermo-1", "--kind", "mac")
    path = tmp_path / "numbers.csv"
    path.write_text(
        "identifier,batch\n00:00:00:00:00:01..00:00:00:00:00:03,7\nbogus,7\n00-1a-2b-3c-4d-5e,8\n"
    )
    dry = await bridge_cli(env, "approve", "acme", "thermo-1", "--file", str(path), "--dry-run")
    assert dry.returncode == 1  # a row was refused
    assert dry.stdout.strip() == (
        "dry run, nothing written: 4 would be added, 0 already approved, 1 refused"
    )
    assert dry.stderr.startswith("line 3: refused: The MAC address 'bogus' is not valid")
    listed = json.loads(await _ok(env, "list", "acme", "thermo-1", "--json"))
    assert listed == []

    run = await bridge_cli(env, "approve", "acme", "thermo-1", "--file", str(path))
    assert run.returncode == 1
    assert "approved: 4 added, 0 already approved, 1 refused" in run.stdout
    path.write_text("00:00:00:00:00:03\n00:00:00:00:00:04\n00:00:00:00:00:04\n")
    again = await _ok(env, "approve", "acme", "thermo-1", "--file", str(path))
    assert "1 added, 1 already approved, 0 refused, 1 duplicate(s) ignored" in again
    # The old form still works.
    assert "1 added" in await _ok(env, "approve", "acme", "thermo-1", "00:00:00:00:00:05")
    await _refused(env, "malformed", "approve", "acme", "thermo-1")
    await _refused(env, "malformed", "approve", "acme", "thermo-1", "--file", "/nonexistent")


async def test_progress_bar_on_a_terminal(settings: Settings, tmp_path: Path) -> None:
    env = _env(settings)
    await _ok(env, "model", "add", "acme", "thermo-1", "--kind", "mac")
    path = tmp_path / "many.txt"
    path.write_text("".join(f"{n:012X}\n" for n in range(30_000)))
    leader, follower = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "approve",
            "acme",
            "thermo-1",
            "--file",
            str(path),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=follower,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        os.close(follower)
        follower = -1
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the pty reports EIO once the writer is gone
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert b"30000 added" in out
    assert b"importing [" in terminal
    assert b"30,000/30,000" in terminal


async def test_unapprove_release_transfer_refusals_and_audit(settings: Settings) -> None:
    env = _env(settings)
    await _ok(env, "model", "add", "acme", "thermo-1", "--kind", "mac")
    await _ok(env, "approve", "acme", "thermo-1", MAC, "00:00:00:00:00:01")
    await _ok(env, "claim", "acme", "thermo-1", MAC, "--owner", "alice")

    stderr = await _refused(
        env, "claimed_by_other", "claim", "acme", "thermo-1", MAC, "--owner", "bob"
    )
    assert "ask its previous owner to release it" in stderr
    await _refused(env, "conflict", "unapprove", "acme", "thermo-1", MAC)
    await _refused(env, "not_owner", "release", "acme", "thermo-1", MAC, "--owner", "bob")
    await _refused(
        env, "not_claimed", "transfer", "acme", "thermo-1", "00:00:00:00:00:01", "--to", "bob"
    )
    await _refused(env, "not_approved", "revoke", "acme", "thermo-1", "00:00:00:00:00:02")

    out = await _ok(env, "transfer", "acme", "thermo-1", MAC, "--to", "bob")
    assert out.strip() == (
        "transferred 001A2B3C4D5E from alice to bob; its old key is no longer valid "
        "and the device activates again for a new one"
    )
    out = await _ok(env, "release", "acme", "thermo-1", MAC, "--owner", "bob")
    assert "its key is no longer valid" in out
    await _ok(env, "claim", "acme", "thermo-1", MAC, "--owner", "carol")
    out = await _ok(env, "unapprove", "acme", "thermo-1", MAC, "00:00:00:00:00:09", "--force")
    assert out.strip() == "unapproved: 1 removed, 1 not approved"

    entries = json.loads(
        await _ok(
            env,
            "audit",
            "--vendor",
            "acme",
            "--model",
            "thermo-1",
            "--identifier",
            "001a2b3c4d5e",
            "--json",
        )
    )
    actions = [(e["action"], e["code"]) for e in entries]
    assert actions == [
        ("unapprove", "ok"),
        ("claim", "ok"),
        ("release", "ok"),
        ("transfer", "ok"),
        ("release", "not_owner"),
        ("unapprove", "conflict"),
        ("claim", "claimed_by_other"),
        ("claim", "ok"),
        ("approve", "ok"),
    ]
    assert all(e["actor"].startswith("cli") for e in entries)
    text = await _ok(env, "audit", "--owner", "bob", "--limit", "2")
    lines = text.splitlines()
    assert len(lines) == 2
    assert " release " in lines[0] and " transfer " in lines[1] and "by=cli" in lines[0]
    assert (await _ok(env, "audit", "--code", "not_owner")).count("\n") == 1
    assert await _ok(env, "audit", "--since", "1h", "--client-id", "nobody") == ""
    run = await bridge_cli(env, "audit", "--since", "yesterday")
    assert run.returncode == 1 and "not a time" in run.stderr


async def test_reenable_revoke_list_with_a_device(
    settings: Settings, bridge: RunningBridge
) -> None:
    env = _env(settings)
    await _ok(env, "model", "add", "acme", "thermo-1", "--kind", "mac")
    await _ok(env, "approve", "acme", "thermo-1", MAC, "00:00:00:00:00:01", "00:00:00:00:00:02")
    await _ok(env, "claim", "acme", "thermo-1", MAC, "--owner", "alice")
    first = await activate(settings, MAC, request_id="r-1")
    assert first.ok, first.reply

    out = await _ok(env, "revoke", "acme", "thermo-1", MAC)
    assert "revoked 001A2B3C4D5E" in out
    assert (await activate(settings, MAC, request_id="r-2")).reply["code"] == "revoked"
    await _refused(env, "conflict", "revoke", "acme", "thermo-1", MAC)
    out = await _ok(env, "reenable", "acme", "thermo-1", MAC, "--window", "10m")
    assert "activation window open until" in out
    second = await activate(settings, MAC, request_id="r-1")
    assert second.ok and second.key != first.key
    await _refused(env, "not_claimed", "reenable", "acme", "thermo-1", "00:00:00:00:00:01")

    run = await bridge_cli(env, "list", "acme", "thermo-1", "--limit", "2")
    assert run.returncode == 0
    assert [line.split()[0] for line in run.stdout.splitlines()] == ["000000000001", "000000000002"]
    assert run.stderr.strip() == "more: --after 000000000002"
    page = json.loads(
        await _ok(env, "list", "acme", "thermo-1", "--after", "00:00:00:00:00:02", "--json")
    )
    assert [(d["identifier"], d["state"], d["owner"]) for d in page] == [
        ("001A2B3C4D5E", "activated", "alice")
    ]
    assert "key_id" not in page[0]
    owned = json.loads(
        await _ok(
            env, "list", "acme", "thermo-1", "--owner", "alice", "--state", "activated", "--json"
        )
    )
    assert len(owned) == 1
    for secret in (first.key, second.key):
        assert secret is not None
        assert secret not in await _ok(env, "audit", "--json", "--limit", "1000")


async def test_new_commands_have_help(settings: Settings) -> None:
    env = _env(settings)
    for command in ("unapprove", "release", "transfer", "reenable", "revoke", "list", "audit"):
        run = await bridge_cli(env, command, "--help")
        assert run.returncode == 0, (command, run.stderr)
        assert f"usage: bridge {command}" in run.stdout
