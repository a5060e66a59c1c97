"""A vendor's serial pattern cannot freeze the bridge: end to end through the HTTP API,
the real broker and the real database."""

from __future__ import annotations

import time

import asyncpg
import httpx

from bridge.admin import Admin
from bridge.config import Settings
from bridge.tokens import create_token
from bridge.web.app import create_app
from tests.helpers import RunningBridge, activate
from tests.integration.test_cli import _env, bridge_cli


async def _vendor_api(admin: Admin, settings: Settings) -> tuple[httpx.AsyncClient, dict[str, str]]:
    issued = await create_token(admin.store, "vendor", "acme", actor="test")
    transport = httpx.ASGITransport(app=create_app(admin.store, settings))
    client = httpx.AsyncClient(transport=transport, base_url="http://bridge.test")
    return client, {"Authorization": f"Bearer {issued.token}"}


async def test_attack_backtracking_pattern_through_the_api_is_answered_promptly(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    """Issue 12, break 7: `(A+)+B` and 60 `A`s got no answer within 5 s and stalled the bridge."""
    api, vendor = await _vendor_api(admin, settings)
    async with api:
        made = await api.post(
            "/v1/models",
            json={"model": "evil", "kind": "serial", "pattern": "(A+)+B"},
            headers=vendor,
        )
        assert made.status_code == 201, made.text
        fine = await api.post(
            "/v1/models",
            json={"model": "fine", "kind": "serial", "claim_required": False},
            headers=vendor,
        )
        assert fine.status_code == 201, fine.text
        approved = await api.post(
            "/v1/models/acme/fine/approvals", json={"identifiers": ["SN-1"]}, headers=vendor
        )
        assert approved.status_code == 200, approved.text

    start = time.monotonic()
    result = await activate(settings, "A" * 60, model="evil", timeout=5)
    elapsed = time.monotonic() - start
    assert result.reply["code"] == "invalid_identifier", result.reply
    assert "does not match the model's pattern '(A+)+B'" in result.reply["message"]
    assert elapsed < 1.0, elapsed
    # The loop was never held: another model's device activates right after.
    assert (await activate(settings, "SN-1", model="fine", seal=True, timeout=5)).ok


async def test_attack_pattern_needing_backtracking_is_refused_by_api_and_cli(
    admin: Admin, settings: Settings
) -> None:
    api, vendor = await _vendor_api(admin, settings)
    async with api:
        refused = await api.post(
            "/v1/models",
            json={"model": "evil", "kind": "serial", "pattern": r"(A+)\1B"},
            headers=vendor,
        )
        too_long = await api.post(
            "/v1/models",
            json={"model": "long", "kind": "serial", "pattern": "A" * 257},
            headers=vendor,
        )
    assert refused.status_code == 422
    assert refused.json() == {
        "code": "malformed",
        "message": r"The pattern '(A+)\\1B' is not accepted: invalid escape sequence: \1 "
        "(patterns are RE2 syntax, which matches in linear time and so has no "
        "backreferences, lookaround or possessive quantifiers).",
    }
    assert too_long.status_code == 422 and too_long.json()["code"] == "malformed"
    assert "at most 256 characters" in too_long.json()["message"]

    cli = await bridge_cli(
        _env(settings), "model", "add", "acme", "cam", "--kind", "serial", "--pattern", "(?=SN)SN"
    )
    assert cli.returncode == 1
    assert cli.stderr.strip().startswith(
        "error: malformed: The pattern '(?=SN)SN' is not accepted: invalid perl operator: (?="
    )
    assert await admin.store.get_model("acme", "cam") is None


async def test_stored_pattern_re2_refuses_is_reported_and_matches_nothing(
    admin: Admin, settings: Settings, bridge: RunningBridge, database_url: str
) -> None:
    """A database from before RE2 may hold such a pattern: `bridge migrate` names the model,
    and its devices are refused (never matched by a backtracking engine)."""
    await admin.add_model("acme", "old", kind="serial", claim_required=False)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE models SET pattern = $1 WHERE model = 'old'", r"(?=SN)SN\d+")
    finally:
        await conn.close()

    migrated = await bridge_cli(_env(settings), "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert (
        "warning: The model acme/old has the pattern '(?=SN)SN\\\\d+', which this bridge does "
        "not accept (invalid perl operator: (?="
    ) in migrated.stderr
    assert "every serial number of it is refused until the pattern is replaced." in (
        migrated.stderr
    )

    result = await activate(settings, "SN123", model="old", timeout=5)
    assert result.reply["code"] == "invalid_identifier"
    assert "this bridge no longer accepts the model's pattern" in result.reply["message"]
