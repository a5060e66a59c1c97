"""Why a lifecycle change was made, through every door: ``--reason`` on the command line
and ``reason`` in the HTTP bodies, kept in the change's audit row. Real processes (the
``bridge`` command, ``bridge api``) on a real PostgreSQL.

An empty reason, or one of spaces only, is refused like any other bad reason rather than
read as "no reason": it is what an unset shell variable (``--reason "$WHY"``) gives, and
quietly recording nothing would lose the reason its sender meant to give.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.text import REASON_MAX
from tests.helpers import api_server, bearer
from tests.integration.test_cli import _env, bridge_cli

MAC = "00:1A:2B:3C:4D:5E"
SPARE = "00:1A:2B:3C:4D:5F"
DEVICE = f"/v1/devices/acme/thermo-1/{MAC}"
#: A reason refused for its length or for being blank, as every door words it.
LENGTH_RULE = f"The reason must be 1 to {REASON_MAX} characters, not only spaces."


async def _ok(env: dict[str, str], *args: str) -> str:
    run = await bridge_cli(env, *args)
    assert run.returncode == 0, (args, run.stderr)
    return run.stdout


async def _refused(env: dict[str, str], *args: str) -> str:
    """The one-line ``malformed`` sentence of a refused command."""
    run = await bridge_cli(env, *args)
    assert run.returncode == 1, (args, run.stdout)
    assert run.stderr.startswith("error: malformed: "), run.stderr
    assert run.stderr.count("\n") == 1, run.stderr  # one sentence, one line
    return run.stderr.removeprefix("error: malformed: ").strip()


def _reasons(entries: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(action, what its detail records as the reason), newest first, successes only."""
    return [
        (e["action"], e["detail"].partition("reason: ")[2] or None if e["detail"] else None)
        for e in entries
        if e["code"] == "ok"
    ]


@pytest.fixture
async def acme(admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC, SPARE])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `bridge api` running as its own process on the test's database."""
    with api_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            yield client


async def test_cli_every_lifecycle_command_records_its_reason(
    settings: Settings, tmp_path: Path
) -> None:
    env = _env(settings)
    await _ok(env, "model", "add", "acme", "thermo-1", "--kind", "mac")
    await _ok(env, "approve", "acme", "thermo-1", MAC, "--reason", "batch 7")
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(f"{SPARE}\n")
    await _ok(env, "approve", "acme", "thermo-1", "--file", str(numbers), "--reason", "batch 8")
    steps = [
        ("claim", "--owner", "alice", "--reason", "bought in the shop"),
        ("revoke", "--reason", "reported stolen"),
        ("reenable", "--reason", "found again"),
        ("transfer", "--to", "bob", "--reason", "a gift to bob"),
        ("release", "--owner", "bob", "--reason", "moving house; it stays"),
    ]
    for command, *options in steps:
        await _ok(env, command, "acme", "thermo-1", MAC, *options)
    await _ok(env, "unapprove", "acme", "thermo-1", SPARE, "--reason", "label misprinted")

    entries = json.loads(await _ok(env, "audit", "--vendor", "acme", "--json"))
    assert _reasons(entries) == [
        ("unapprove", "label misprinted"),
        ("release", "moving house; it stays"),
        ("transfer", "a gift to bob"),
        ("reenable", "found again"),
        ("revoke", "reported stolen"),
        ("claim", "bought in the shop"),
        ("approve", "batch 8"),
        ("approve", "batch 7"),
        ("model_add", None),
    ]
    assert all(e["actor"].startswith("cli") for e in entries)
    # The commands' own output is what it was before there were reasons.
    run = await bridge_cli(env, "claim", "acme", "thermo-1", MAC, "--owner", "carol")
    assert run.returncode == 0 and run.stdout.startswith("claimed 001A2B3C4D5E for carol;")
    for command in ("claim", "release", "transfer", "reenable", "revoke", "approve", "unapprove"):
        usage = await _ok(env, command, "--help")
        assert "--reason TEXT" in usage and "recorded in the audit log" in usage, command


@pytest.mark.usefixtures("acme")
async def test_http_every_action_records_its_reason_and_the_owner_reads_it(
    admin: Admin, http: httpx.AsyncClient
) -> None:
    alice = await bearer(admin, "owner", "alice")
    bob = await bearer(admin, "owner", "bob")
    vendor = await bearer(admin, "vendor", "acme")
    administrator = await bearer(admin, "admin")

    released = await http.post(
        f"{DEVICE}/release", json={"reason": "sold it with the house"}, headers=alice
    )
    assert released.status_code == 200, released.text
    assert released.json()["device"]["owner"] is None
    history = (await http.get("/v1/history", headers=alice)).json()["entries"]
    assert (history[0]["action"], history[0]["reason"]) == ("release", "sold it with the house")

    claim = {"vendor": "acme", "model": "thermo-1", "identifier": MAC, "reason": "bought it"}
    assert (await http.post("/v1/claims", json=claim, headers=bob)).status_code == 200
    calls: list[tuple[str, Mapping[str, object], dict[str, str]]] = [
        (f"{DEVICE}/revoke", {"reason": "reported stolen"}, vendor),
        (f"{DEVICE}/reenable", {"reason": "found again"}, vendor),
        (f"{DEVICE}/transfer", {"to": "carol", "reason": "a gift to carol"}, administrator),
        (
            "/v1/models/acme/thermo-1/unapprove",
            {"identifiers": [SPARE], "reason": "label misprinted"},
            vendor,
        ),
        (
            "/v1/models/acme/thermo-1/approvals",
            {"identifiers": [SPARE], "reason": "reprinted"},
            vendor,
        ),
        (
            "/v1/models/acme/thermo-1/approvals/bulk",
            {"rows": ["00:1A:2B:3C:4D:60"], "reason": "batch 9"},
            vendor,
        ),
    ]
    for path, body, token in calls:
        answer = await http.post(path, json=body, headers=token)
        assert answer.status_code == 200, (path, answer.text)
    # No body at all (as before there were reasons), JSON null, an empty object, a null
    # reason: each is an action without a reason.
    assert (await http.post(f"{DEVICE}/reenable", headers=vendor)).status_code == 200
    as_json = {**vendor, "Content-Type": "application/json"}
    null = await http.post(f"{DEVICE}/reenable", content=b"null", headers=as_json)
    assert null.status_code == 200, null.text
    for empty in ({}, {"reason": None}):
        answer = await http.post(f"{DEVICE}/reenable", json=empty, headers=vendor)
        assert answer.status_code == 200, (empty, answer.text)

    audit = await http.get("/v1/audit", params={"vendor": "acme"}, headers=administrator)
    assert _reasons(audit.json()["entries"]) == [
        *[("reenable", None)] * 4,
        ("approve", "batch 9"),
        ("approve", "reprinted"),
        ("unapprove", "label misprinted"),
        ("transfer", "a gift to carol"),
        ("reenable", "found again"),
        ("revoke", "reported stolen"),
        ("claim", "bought it"),
        ("release", "sold it with the house"),
        ("claim", None),
        ("approve", None),
        ("approve", None),
        ("model_add", None),
    ]


@pytest.mark.usefixtures("acme")
async def test_attack_reason_with_control_characters_is_refused(
    admin: Admin, settings: Settings, http: httpx.AsyncClient
) -> None:
    alice = await bearer(admin, "owner", "alice")
    vendor = await bearer(admin, "vendor", "acme")
    # Terminal escapes, a forged second audit line, NUL, C1, and a right-to-left
    # override (invisible: it would show the reason reversed in the history).
    for reason in ("\x1b[2Jcleared", "ok\nreason: forged", "a\x00b", "a\x85b", "a\u202eb"):
        for path, token in ((f"{DEVICE}/release", alice), (f"{DEVICE}/revoke", vendor)):
            answer = await http.post(path, json={"reason": reason}, headers=token)
            assert answer.status_code == 422, (reason, answer.text)
            body = answer.json()
            assert body["code"] == "malformed", body
            assert "reason" in body["message"] and body["message"].endswith("."), body
            assert "\n" not in body["message"]
    invisible = await http.post(f"{DEVICE}/release", json={"reason": "a\u202eb"}, headers=alice)
    assert invisible.json()["message"] == (
        "The reason contains the invisible or control character U+202E; use printable characters."
    )

    env = _env(settings)
    for reason, char in (("\x1b[2Jcleared", "001B"), ("a\u202eb", "202E"), ("a\u2028b", "2028")):
        sentence = await _refused(
            env, "release", "acme", "thermo-1", MAC, "--owner", "alice", "--reason", reason
        )
        assert sentence == (
            f"The reason contains the invisible or control character U+{char}; "
            "use printable characters."
        )
    device = await admin.show("acme", "thermo-1", MAC)
    assert (device.state, device.owner) == ("claimed", "alice")
    entries = await admin.audit(vendor="acme", limit=100)
    assert [e.action for e in entries] == ["claim", "approve", "approve", "model_add"]


@pytest.mark.usefixtures("acme")
async def test_attack_overlong_reason_is_refused(
    admin: Admin, settings: Settings, http: httpx.AsyncClient
) -> None:
    alice = await bearer(admin, "owner", "alice")
    too_long = "x" * (REASON_MAX + 1)
    answer = await http.post(f"{DEVICE}/release", json={"reason": too_long}, headers=alice)
    assert answer.status_code == 422
    assert answer.json() == {
        "code": "malformed",
        "message": f"The field 'reason' is invalid: String should have at most "
        f"{REASON_MAX} characters.",
    }
    env = _env(settings)
    sentence = await _refused(env, "revoke", "acme", "thermo-1", MAC, "--reason", too_long)
    assert sentence == LENGTH_RULE
    assert (await admin.show("acme", "thermo-1", MAC)).state == "claimed"
    # The limit itself is accepted, whole.
    await _ok(env, "revoke", "acme", "thermo-1", MAC, "--reason", "y" * REASON_MAX)
    (entry,) = [e for e in await admin.audit(vendor="acme") if e.action == "revoke"]
    assert entry.detail is not None and entry.detail.endswith("reason: " + "y" * REASON_MAX)


@pytest.mark.usefixtures("acme")
async def test_an_empty_or_blank_reason_is_refused_not_dropped(
    admin: Admin, settings: Settings, http: httpx.AsyncClient
) -> None:
    alice = await bearer(admin, "owner", "alice")
    for reason in ("", "   ", "\u3000"):
        answer = await http.post(f"{DEVICE}/release", json={"reason": reason}, headers=alice)
        assert answer.status_code == 422, (reason, answer.text)
        assert answer.json()["code"] == "malformed"
    # Past the document's length check, the rule's own sentence.
    assert answer.json()["message"] == LENGTH_RULE

    env = _env(settings)
    for reason in ("", "   "):
        sentence = await _refused(
            env, "release", "acme", "thermo-1", MAC, "--owner", "alice", "--reason", reason
        )
        assert sentence == LENGTH_RULE
    assert (await admin.show("acme", "thermo-1", MAC)).owner == "alice"
