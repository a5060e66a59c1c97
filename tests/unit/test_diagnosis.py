"""The support desk's verdict from hand-built facts (bridge/diagnosis.py, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge.diagnosis import (
    Action,
    Device,
    Event,
    Facts,
    Neighbour,
    RangeHint,
    Stray,
    Verdict,
    classify,
    difference,
    near_misses,
    range_hint,
    verdict,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MAC = "001A2B3C4D5E"


def _facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "vendor": "acme",
        "model": "thermo-1",
        "kind": "mac",
        "typed": "00:1A:2B:3C:4D:5E",
        "canonical": MAC,
        "invalid_reason": None,
        "now": NOW,
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def _claimed(hours_ago: float, window_hours: float = 24, owner: str = "alice") -> Device:
    claimed = NOW - timedelta(hours=hours_ago)
    return Device(
        state="claimed",
        owner=owner,
        approved_at=claimed - timedelta(days=3),
        window_ends_at=claimed + timedelta(hours=window_hours),
        activated_at=None,
        client_id=None,
        claimed_at=claimed,
    )


def _attempt(hours_ago: float, code: str, presented: str, identifier: str | None) -> Event:
    return Event(
        at=NOW - timedelta(hours=hours_ago),
        action="activate",
        code=code,
        actor="device",
        client_id="dev-7",
        presented=presented,
        identifier=identifier,
    )


def test_near_misses_are_one_edit_away_and_valid() -> None:
    found = near_misses("mac", "00:1A:2B:3C:4D:5E")
    assert found["001A2B3C4D5F"] == "one character"
    assert found["001A2B3C4DE5"] == "swapped"
    assert MAC not in found
    assert all(len(c) == 12 for c in found)
    # Eleven digits typed: the twelfth is missing somewhere.
    short = near_misses("mac", "00:1A:2B:3C:4D:5")
    assert short["001A2B3C4D5E"] == "missing"
    # A look-alike letter is replaced, never kept: every candidate is a valid MAC address.
    misread = near_misses("mac", "OO:1A:2B:3C:4D:5E")
    assert misread == {}  # two letters: no single edit makes it a MAC address
    assert all(set(c) <= set("0123456789ABCDEF") and len(c) == 12 for c in misread)
    assert set(near_misses("mac", "O01A2B3C4D5E")) >= {"001A2B3C4D5E"}


def test_difference_names_near_misses_and_other_kinds() -> None:
    assert difference("mac", MAC, "00:1A:2B:3C:4D:5F", "001A2B3C4D5F") == (
        "differs in one character"
    )
    assert difference("mac", MAC, "whatever", "FFFFFFFFFFFF") is None  # another device
    assert difference("mac", MAC, "490154203237518", None) == "is a valid IMEI, not a MAC address"
    assert difference("mac", MAC, "SN-0042", None) == (
        "is not a MAC address at all (perhaps a serial number)"
    )
    assert difference("mac", MAC, "001A2B3C4D5", None) == (
        "differs in one character and is not a valid MAC address"
    )


def test_range_hint_inside_after_near_apart() -> None:
    below = ["001A2B3C4D5D", "001A2B3C4D5C", "001A2B3C4D5B"]
    above = ["001A2B3C4D5F", "001A2B3C4D60"]
    inside = range_hint("mac", MAC, below, above)
    assert inside == RangeHint(
        "001A2B3C4D5D", "001A2B3C4D5F", "inside", "001A2B3C4D5B", "001A2B3C4D60"
    )
    after = range_hint("mac", MAC, below, [])
    assert after is not None and after.relation == "after" and after.last == "001A2B3C4D5D"
    near = range_hint("mac", MAC, ["001A2B3C4D50"], [])
    assert near is not None and near.relation == "near"
    apart = range_hint("mac", MAC, ["000000000001"], [])
    assert apart is not None and apart.relation == "apart"


def test_typo_names_the_unclaimed_neighbour() -> None:
    facts = _facts(
        device=None,
        neighbours=[
            Neighbour("001A2B3C4D5F", "one character", None, "approved"),
            Neighbour("001A2B3C4D5D", "one character", "bob", "claimed"),
        ],
    )
    found = verdict(facts)
    assert (found.verdict, found.cause) == (Verdict.TYPO, 1)
    assert "00:1A:2B:3C:4D:5F is approved and unclaimed" in found.evidence[0]
    assert "already claimed" in found.evidence[1]
    assert found.next_step.startswith("Add 00:1A:2B:3C:4D:5F instead")


def test_invalid_format_is_a_typo() -> None:
    found = verdict(_facts(typed="OO:1A:2B", canonical=None, invalid_reason="it has 6 digits"))
    assert found.verdict is Verdict.TYPO
    assert "it has 6 digits" in found.evidence[0]


def test_claimed_by_other_says_by_whom_and_since_when() -> None:
    found = verdict(_facts(device=_claimed(30, owner="bob"), asking="alice"))
    assert (found.verdict, found.cause) == (Verdict.CLAIMED_BY_OTHER, 2)
    assert found.evidence == ["It is claimed by bob since 2026-11-29 06:00 UTC."]
    assert found.actions == [Action.RELEASE, Action.TRANSFER]


def test_not_approved_inside_a_range_or_for_another_model() -> None:
    hint = RangeHint("001A2B3C4D5D", "001A2B3C4D5F", "inside", "001A2B3C4D00", "001A2B3C4DFF")
    found = verdict(_facts(device=None, range_hint=hint))
    assert (found.verdict, found.cause) == (Verdict.NOT_APPROVED, 3)
    assert (
        "missing from an approved run (00:1A:2B:3C:4D:00 .. 00:1A:2B:3C:4D:FF)"
        in (found.evidence[0])
    )
    assert found.actions == [Action.APPROVE]
    other = verdict(_facts(device=None, other_models=[("thermo-2", "approved")]))
    assert other.verdict is Verdict.NOT_APPROVED
    assert "approved for acme/thermo-2" in other.evidence[0]
    assert "add it under that model" in other.next_step


def test_wrong_identifier_from_strays_in_the_window() -> None:
    stray = Stray(
        _attempt(2, "not_approved", "00:1A:2B:3C:4D:5F", "001A2B3C4D5F"), "differs in one character"
    )
    found = verdict(_facts(device=_claimed(5), strays=[stray]))
    assert (found.verdict, found.cause) == (Verdict.WRONG_IDENTIFIER, 4)
    assert (
        "client id dev-7 tried '00:1A:2B:3C:4D:5F', which differs in one character"
        in (found.evidence[1])
    )


def test_never_tried_and_window_closed() -> None:
    assert verdict(_facts(device=_claimed(5))).verdict is Verdict.NEVER_TRIED
    closed = verdict(_facts(device=_claimed(30)))
    assert closed.verdict is Verdict.WINDOW_CLOSED
    assert closed.actions == [Action.REENABLE]
    late = _attempt(1, "window_expired", "00:1A:2B:3C:4D:5E", MAC)
    after = verdict(_facts(device=_claimed(30), events=[late]))
    assert after.verdict is Verdict.WINDOW_CLOSED
    assert "after the window closed (window_expired)" in after.evidence[-1]


def test_an_attempt_before_the_claim_does_not_count_as_trying() -> None:
    before = _attempt(10, "not_claimed", "00:1A:2B:3C:4D:5E", MAC)
    assert verdict(_facts(device=_claimed(5), events=[before])).verdict is Verdict.NEVER_TRIED


def test_refused_attempts_with_the_right_number_point_at_the_firmware() -> None:
    refused = _attempt(1, "seal_required", "00:1A:2B:3C:4D:5E", MAC)
    found = verdict(_facts(device=_claimed(5), events=[refused]))
    assert (found.verdict, found.cause) == (Verdict.DEVICE_REFUSED, 4)


def test_activated_is_fine() -> None:
    device = Device("activated", "alice", NOW, None, NOW, "dev-1", NOW - timedelta(hours=1))
    assert verdict(_facts(device=device)).verdict is Verdict.FINE


def test_classify_keeps_near_misses_and_other_kinds_only() -> None:
    attempts = [
        _attempt(1, "not_approved", "00:1A:2B:3C:4D:5F", "001A2B3C4D5F"),
        _attempt(1, "not_approved", "AA:BB:CC:DD:EE:FF", "AABBCCDDEEFF"),
        _attempt(1, "invalid_identifier", "SN-0042", None),
    ]
    kept = classify("mac", MAC, attempts)
    assert [s.event.presented for s in kept] == ["00:1A:2B:3C:4D:5F", "SN-0042"]
