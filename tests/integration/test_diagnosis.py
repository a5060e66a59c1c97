"""Admin.diagnose and Admin.resolve against a real PostgreSQL, with real activation
attempts through a real Mosquitto and the running bridge where attempts matter."""

from __future__ import annotations

import asyncio

from bridge.admin import Admin
from bridge.config import Settings
from bridge.diagnosis import Verdict
from bridge.support import SupportDesk
from tests.helpers import RunningBridge, activate

MAC = "00:1A:2B:3C:4D:5E"


async def test_a_lookalike_typo_names_the_approved_number_and_whether_it_is_free(
    admin: Admin,
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", ["00:1B:99:3C:4D:5E", "00:1A:2B:3C:5D:5E"])
    await admin.claim("acme", "thermo-1", "00:1A:2B:3C:5D:5E", owner="bob")

    found = await admin.diagnose("acme", "thermo-1", "00:18:99:3C:4D:5E")  # B read as 8
    assert (found.verdict, found.cause) == (Verdict.TYPO, 1)
    assert [(n.identifier, n.how, n.owner) for n in found.neighbours] == [
        ("001B993C4D5E", "look-alike", None)
    ]
    assert found.next_step.startswith("Add 00:1B:99:3C:4D:5E instead")

    # One digit off: 4D:5E is not approved; 5D:5E (claimed by bob) and 4D:7E (free) are.
    await admin.approve("acme", "thermo-1", ["00:1A:2B:3C:4D:7E"])
    near = await admin.diagnose("acme", "thermo-1", "001a.2b3c.4d5e")
    assert near.verdict is Verdict.TYPO
    assert {(n.identifier, n.owner) for n in near.neighbours} == {
        ("001A2B3C4D7E", None),
        ("001A2B3C5D5E", "bob"),
    }
    assert near.next_step.startswith("Add 00:1A:2B:3C:4D:7E instead")
    assert any("00:1A:2B:3C:5D:5E is approved and already claimed" in e for e in near.evidence)

    # Not a MAC address at all, yet one look-alike fold from an approved one.
    bad = await admin.diagnose("acme", "thermo-1", "OO:1B:99:3C:4D:5E")
    assert bad.verdict is Verdict.TYPO and bad.identifier is None
    assert "is not a valid MAC address" in bad.evidence[0]


async def test_claimed_by_another_owner_says_by_whom_since_when_and_resolves(
    admin: Admin, settings: Settings
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="bob")

    found = await admin.diagnose("acme", "thermo-1", "00-1a-2b-3c-4d-5e", asking="alice")
    assert (found.verdict, found.cause) == (Verdict.CLAIMED_BY_OTHER, 2)
    assert found.device is not None and found.device.claimed_at is not None
    assert found.evidence[0].startswith("It is claimed by bob since ")
    assert [a.value for a in found.actions] == ["release", "transfer"]

    support = Admin(admin.store, settings=settings, actor="api:vendor:acme:support1")
    sentence = await support.resolve(
        "acme", "thermo-1", MAC, "release", reason="bob sold it to alice (receipt seen)"
    )
    assert "was released from bob's account" in sentence
    entry = (await admin.audit(identifier=MAC, vendor="acme", model="thermo-1", limit=1))[0]
    assert (entry.action, entry.code, entry.actor, entry.owner) == (
        "release",
        "ok",
        "api:vendor:acme:support1",
        "bob",
    )
    assert entry.detail == "reason: bob sold it to alice (receipt seen)"
    history = await SupportDesk(admin).history("bob")
    assert (history[0].action, history[0].reason, history[0].by) == (
        "release",
        "bob sold it to alice (receipt seen)",
        "the vendor",
    )
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    assert (await admin.diagnose("acme", "thermo-1", MAC, asking="alice")).verdict is (
        Verdict.NEVER_TRIED
    )


async def test_support_transfers_approves_and_reopens_through_the_transitions(
    admin: Admin, settings: Settings
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="bob")
    support = Admin(admin.store, settings=settings, actor="cli:support")
    await support.resolve("acme", "thermo-1", MAC, "transfer", to="alice", reason="resale")
    assert (await admin.show("acme", "thermo-1", MAC)).owner == "alice"
    await support.resolve("acme", "thermo-1", "00:1A:2B:3C:4D:60", "approve", reason="left out")
    assert (await admin.show("acme", "thermo-1", "00:1A:2B:3C:4D:60")).state == "approved"
    await support.resolve("acme", "thermo-1", MAC, "reenable", reason="window missed")
    entries = await admin.audit(identifier=MAC, vendor="acme", model="thermo-1", limit=2)
    assert [(e.action, e.actor, e.detail) for e in entries] == [
        ("reenable", "cli:support", "was claimed, window 86400s; reason: window missed"),
        ("transfer", "cli:support", "from bob; reason: resale"),
    ]


async def test_not_approved_inside_a_range_or_for_another_model(admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.add_model("acme", "thermo-2", kind="mac")
    report = await admin.approve_rows(
        "acme", "thermo-1", [(1, "00:1A:2B:3C:4D:00..00:1A:2B:3C:4D:FF")]
    )
    assert report.added == 256
    await admin.unapprove("acme", "thermo-1", ["00:1A:2B:3C:4D:80"])
    # Inside or next to a run every number is one character from an approved one:
    # the run, not the neighbours, decides.
    hole = await admin.diagnose("acme", "thermo-1", "00:1A:2B:3C:4D:80")
    assert (hole.verdict, hole.cause) == (Verdict.NOT_APPROVED, 3)
    assert hole.evidence[0] == (
        "00:1A:2B:3C:4D:80 is missing from an approved run (00:1A:2B:3C:4D:00 .. "
        "00:1A:2B:3C:4D:FF): 00:1A:2B:3C:4D:7F and 00:1A:2B:3C:4D:81 on either side are "
        "approved."
    )
    after = await admin.diagnose("acme", "thermo-1", "00:1A:2B:3C:4E:00")
    assert (after.verdict, after.cause) == (Verdict.NOT_APPROVED, 3)
    assert after.evidence[0] == (
        "00:1A:2B:3C:4E:00 is the next number after an approved run (00:1A:2B:3C:4D:81 .. "
        "00:1A:2B:3C:4D:FF)."
    )
    assert [a.value for a in after.actions] == ["approve"]

    await admin.approve("acme", "thermo-2", ["00:AA:00:00:00:01"])
    other = await admin.diagnose("acme", "thermo-1", "00:AA:00:00:00:01")
    assert other.verdict is Verdict.NOT_APPROVED
    assert any("approved for acme/thermo-2 (approved)" in e for e in other.evidence)


async def test_attempts_with_a_near_miss_or_another_kind_blame_the_device(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac", plaintext_keys=True)
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    before = await admin.diagnose("acme", "thermo-1", MAC)
    assert (before.verdict, before.cause) == (Verdict.NEVER_TRIED, None)

    near = await activate(settings, "00:1A:2B:3C:4D:5F", client_id="thermo-a", seal=False)
    assert near.reply["code"] == "not_approved"
    serial = await activate(settings, "SN-0042", client_id="thermo-b", seal=False)
    assert serial.reply["code"] == "invalid_identifier"
    unrelated = await activate(settings, "AA:BB:CC:DD:EE:FF", client_id="other", seal=False)
    assert unrelated.reply["code"] == "not_approved"

    found = await admin.diagnose("acme", "thermo-1", MAC)
    assert (found.verdict, found.cause) == (Verdict.WRONG_IDENTIFIER, 4)
    assert [(s.event.client_id, s.event.presented, s.how) for s in found.strays] == [
        ("thermo-a", "00:1A:2B:3C:4D:5F", "differs in one character"),
        ("thermo-b", "SN-0042", "is not a MAC address at all (perhaps a serial number)"),
    ]
    assert any("client id thermo-a tried '00:1A:2B:3C:4D:5F'" in e for e in found.evidence)

    # Then the right number: activated, fine, and the timeline has the attempt.
    ok = await activate(settings, MAC, client_id="thermo-a", seal=False)
    assert ok.ok
    fine = await admin.diagnose("acme", "thermo-1", MAC)
    assert fine.verdict is Verdict.FINE
    assert [(e.action, e.code, e.client_id) for e in fine.timeline if e.action == "activate"] == [
        ("activate", "ok", "thermo-a")
    ]


async def test_a_window_that_closed_before_the_first_attempt(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac", window_seconds=1, plaintext_keys=True)
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    await asyncio.sleep(1.2)
    silent = await admin.diagnose("acme", "thermo-1", MAC)
    assert silent.verdict is Verdict.WINDOW_CLOSED
    assert "No attempt with this number reached the bridge" in silent.evidence[-1]

    late = await activate(settings, MAC, client_id="thermo-late", seal=False)
    assert late.reply["code"] == "window_expired"
    found = await admin.diagnose("acme", "thermo-1", MAC)
    assert found.verdict is Verdict.WINDOW_CLOSED
    assert "after the window closed (window_expired)" in found.evidence[-1]
    assert [a.value for a in found.actions] == ["reenable"]
