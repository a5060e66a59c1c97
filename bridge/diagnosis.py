"""Why a device cannot be added or activated: the support desk's verdict. Pure: no I/O.

The bridge's support guidance names four causes: (1) the number was entered wrong,
(2) the device is still claimed by someone else, (3) the vendor has not approved the
number yet, (4) the device activates with a wrong identifier (a firmware or code
problem). :func:`verdict` reads the facts :mod:`bridge.db.diagnosis` gathered about one
number (its device row, its timeline from the audit log and the claims, approved
numbers near it, attempts in its claim's window that carried another number) and names
the cause, or "never tried", "window closed before the first attempt", "fine", with the
evidence and the next step, each one sentence.

It also computes what those queries look for: the numbers one edit away from a typed
one (:func:`near_misses`), how an attempt's number differs from the claimed one
(:func:`difference`) and where a number sits among approved ones (:func:`range_hint`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

from bridge import identifiers
from bridge.errors import InvalidIdentifier
from bridge.identifiers import Kind

#: At most this many approved neighbours are named as "did you mean" candidates.
MAX_NEIGHBOURS: Final = 5
#: Approved numbers this close (in the number's own counting) are "next to" it.
NEAR_DISTANCE: Final = 16

# The characters each kind's canonical form is made of: one-character edits stay in it.
_ALPHABETS: Final = {
    Kind.MAC: "0123456789ABCDEF",
    Kind.IMEI: "0123456789",
    Kind.MEID: "0123456789ABCDEF",
    Kind.ESN: "0123456789ABCDEF",
    Kind.SERIAL: "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-",
}
_SEPARATORS: Final = frozenset(":-./ ")
_HEX_WIDTHS: Final = {Kind.MAC: 12, Kind.MEID: 14, Kind.ESN: 8}


class Verdict(StrEnum):
    """The named outcome of a diagnosis (``cause`` numbers the four of the guidance)."""

    TYPO = "typo"  # (1)
    CLAIMED_BY_OTHER = "claimed_by_other"  # (2)
    NOT_APPROVED = "not_approved"  # (3)
    WRONG_IDENTIFIER = "wrong_identifier"  # (4)
    DEVICE_REFUSED = "device_refused"  # (4): it sent the right number and was refused
    NEVER_TRIED = "never_tried"
    WINDOW_CLOSED = "window_closed"
    NOT_CLAIMED = "not_claimed"
    REVOKED = "revoked"
    FINE = "fine"


CAUSES: Final = {
    Verdict.TYPO: 1,
    Verdict.CLAIMED_BY_OTHER: 2,
    Verdict.NOT_APPROVED: 3,
    Verdict.WRONG_IDENTIFIER: 4,
    Verdict.DEVICE_REFUSED: 4,
}


class Action(StrEnum):
    """What support can do about it from the same place (each an Admin transition)."""

    RELEASE = "release"
    TRANSFER = "transfer"
    APPROVE = "approve"
    REENABLE = "reenable"


@dataclass(frozen=True)
class Event:
    """One line of the timeline: an audit entry, or the start of a claim."""

    at: datetime
    action: str
    code: str
    actor: str | None = None
    owner: str | None = None
    client_id: str | None = None
    presented: str | None = None
    identifier: str | None = None
    detail: str | None = None
    count: int = 1
    last_at: datetime | None = None

    @property
    def attempt(self) -> bool:
        return self.action == "activate"


@dataclass(frozen=True)
class Device:
    """The number's row on the approval list, as it is now."""

    state: str
    owner: str | None
    approved_at: datetime
    window_ends_at: datetime | None
    activated_at: datetime | None
    client_id: str | None
    #: when the open claim began (None: not claimed)
    claimed_at: datetime | None


@dataclass(frozen=True)
class Neighbour:
    """An approved number near the one asked about."""

    identifier: str  # canonical
    how: str  # "look-alike", "one character", "swapped", "missing", "extra"
    owner: str | None
    state: str


@dataclass(frozen=True)
class RangeHint:
    """Where a number that is not approved sits among approved ones of its model."""

    below: str | None  # the nearest approved number under it (canonical)
    above: str | None
    relation: str  # "inside", "after", "before", "near" or "apart"
    first: str | None = None  # the approved run it belongs to, as far as was read
    last: str | None = None


@dataclass(frozen=True)
class Stray:
    """An attempt in the claim's window whose number is not the claimed one."""

    event: Event
    how: str  # a clause: "differs in one character", "is an IMEI, not a MAC address"


@dataclass(frozen=True)
class Facts:
    """Everything the verdict reads; gathered by bridge.db.diagnosis."""

    vendor: str
    model: str
    kind: str
    typed: str
    canonical: str | None
    invalid_reason: str | None
    now: datetime
    claim_required: bool = True
    asking: str | None = None
    device: Device | None = None
    events: Sequence[Event] = ()
    neighbours: Sequence[Neighbour] = ()
    range_hint: RangeHint | None = None
    other_models: Sequence[tuple[str, str]] = ()  # (model, state) of the same vendor
    strays: Sequence[Stray] = ()
    support_contact: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    """The answer: state, timeline and verdict with its evidence and next step."""

    vendor: str
    model: str
    kind: str
    typed: str
    identifier: str | None  # canonical, shown the way people read it
    verdict: Verdict
    cause: int | None
    summary: str
    evidence: list[str]
    next_step: str
    actions: list[Action]
    device: Device | None
    timeline: list[Event]
    neighbours: list[Neighbour] = field(default_factory=list)
    strays: list[Stray] = field(default_factory=list)
    support_contact: str | None = None


# -- what the queries look for -------------------------------------------------------


def compact(text: str) -> str:
    """``text`` upper-cased without separators or spaces: the layout edits are made in."""
    return "".join(c for c in text if c not in _SEPARATORS and not c.isspace()).upper()


def near_misses(kind: str, typed: str, pattern: str | None = None) -> dict[str, str]:
    """Valid numbers of ``kind`` one edit away from ``typed``: {canonical: how}.

    An edit is one character replaced, two neighbours swapped, one left out or one
    too many, in the separator-free layout; look-alike misreadings (O for 0) are the
    ``lookalike`` index's job and are found there. The typed number itself is left out.
    """
    k = Kind(kind)
    alphabet = _ALPHABETS[k]
    text = compact(typed)
    found: dict[str, str] = {}

    # Hex kinds of fixed length: a candidate in the canonical layout is valid exactly
    # when it has the right length and only hex digits, which spares a full parse of
    # each of the ~400 candidates of a MAC address.
    width = _HEX_WIDTHS.get(k)
    hex_digits = frozenset(alphabet)

    def keep(candidate: str, how: str) -> None:
        if width is not None:
            if len(candidate) == width and hex_digits.issuperset(candidate):
                found.setdefault(candidate, how)
            return
        with contextlib.suppress(InvalidIdentifier):
            canonical = identifiers.normalize(k, candidate, pattern)
            found.setdefault(canonical, how)

    for i, char in enumerate(text):
        for other in alphabet:
            if other != char:
                keep(text[:i] + other + text[i + 1 :], "one character")
        if i + 1 < len(text) and text[i + 1] != char:
            keep(text[:i] + text[i + 1] + char + text[i + 2 :], "swapped")
        keep(text[:i] + text[i + 1 :], "extra")
    for i in range(len(text) + 1):
        for other in alphabet:
            keep(text[:i] + other + text[i:], "missing")
    with contextlib.suppress(InvalidIdentifier):
        found.pop(identifiers.normalize(k, typed, pattern), None)
    return found


def difference(kind: str, claimed: str, presented: str, canonical: str | None) -> str | None:
    """How an attempt's number differs from the claimed one, as a clause; None if unrelated.

    ``canonical`` is the attempt's number read as the model's kind (None when it could
    not be). Near misses (one edit, look-alikes) and numbers of another kind count;
    anything else may be another device and is not blamed on this one.
    """
    k = Kind(kind)
    what = identifiers.kind_name(k)
    if canonical is not None:
        if canonical == claimed:
            return None
        if identifiers.lookalike_substitutions(canonical, claimed):
            return "differs only by look-alike characters"
        distance = _edit_distance_at_most_one(compact(canonical), compact(claimed))
        return _EDIT_CLAUSE.get(distance) if distance else None
    if _edit_distance_at_most_one(compact(presented), compact(claimed)):
        return f"differs in one character and is not a valid {what}"
    other = _other_kind(presented, k)
    if other is not None:
        return f"is a valid {identifiers.kind_name(other)}, not a {what}"
    return f"is not a {what} at all (perhaps a serial number)"


@functools.lru_cache(maxsize=4096)
def _other_kind(presented: str, kind: Kind) -> Kind | None:
    # Tallied rows repeat the same few numbers; parsing each under four kinds is the
    # costly part of reading a window's attempts.
    for other in (Kind.MAC, Kind.IMEI, Kind.MEID, Kind.ESN):
        if other is kind:
            continue
        with contextlib.suppress(InvalidIdentifier):
            identifiers.normalize(other, presented)
            return other
    return None


_EDIT_CLAUSE: Final = {
    "one character": "differs in one character",
    "swapped": "has two neighbouring characters swapped",
    "missing": "misses one character",
    "extra": "has one character too many",
}


def _edit_distance_at_most_one(a: str, b: str) -> str | None:
    """The one edit turning ``b`` into ``a`` (its name), or None (same, or further)."""
    if a == b:
        return None
    if len(a) == len(b):
        diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diffs) == 1:
            return "one character"
        if len(diffs) == 2 and diffs[1] == diffs[0] + 1:
            i = diffs[0]
            if a[i] == b[i + 1] and a[i + 1] == b[i]:
                return "swapped"
        return None
    if abs(len(a) - len(b)) != 1:
        return None
    shorter, longer = (a, b) if len(a) < len(b) else (b, a)
    for i in range(len(longer)):
        if longer[:i] + longer[i + 1 :] == shorter:
            return "missing" if a is shorter else "extra"
    return None


def ordinal(kind: str, canonical: str) -> int | None:
    """The number's place in its kind's counting (for "next to a range"); None if none.

    MAC, MEID and ESN count in hex; an IMEI by its 14 digits before the check digit; a
    serial number by its trailing digits (within one prefix, see :func:`range_hint`).
    """
    k = Kind(kind)
    if k in (Kind.MAC, Kind.MEID, Kind.ESN):
        return int(canonical, 16)
    if k is Kind.IMEI:
        return int(canonical[:14])
    digits = len(canonical) - len(canonical.rstrip("0123456789"))
    return int(canonical[-digits:]) if digits else None


def _prefix(kind: str, canonical: str) -> str:
    if Kind(kind) is not Kind.SERIAL:
        return ""
    return canonical.rstrip("0123456789")


def range_hint(
    kind: str, canonical: str, below: Sequence[str], above: Sequence[str]
) -> RangeHint | None:
    """Where ``canonical`` (not approved) sits among approved numbers of its model.

    ``below`` are the approved numbers under it, nearest first; ``above`` those over it,
    nearest first (a bounded read). "inside": approved numbers run on both sides with
    only it missing; "after" / "before": it is the next number past the end or before the
    start of an approved run; "near": an approved number is at most NEAR_DISTANCE away.
    """
    here = ordinal(kind, canonical)
    if here is None:
        return None
    prefix = _prefix(kind, canonical)

    def counted(numbers: Sequence[str]) -> list[tuple[str, int]]:
        return [
            (n, o)
            for n in numbers
            if _prefix(kind, n) == prefix and (o := ordinal(kind, n)) is not None
        ]

    def run_end(items: list[tuple[str, int]], step: int) -> str | None:
        # The farthest number of the run that starts right next to ``here``.
        expected, last = here + step, None
        for number, place in items:
            if place != expected:
                break
            last, expected = number, expected + step
        return last

    low, high = counted(below), counted(above)
    below_first = low[0][0] if low else None
    above_first = high[0][0] if high else None
    gap_below = here - low[0][1] if low else None
    gap_above = high[0][1] - here if high else None
    if gap_below == 1 and gap_above == 1:
        return RangeHint(below_first, above_first, "inside", run_end(low, -1), run_end(high, 1))
    if gap_below == 1:
        return RangeHint(below_first, above_first, "after", run_end(low, -1), below_first)
    if gap_above == 1:
        return RangeHint(below_first, above_first, "before", above_first, run_end(high, 1))
    if any(g is not None and g <= NEAR_DISTANCE for g in (gap_below, gap_above)):
        return RangeHint(below_first, above_first, "near")
    return RangeHint(below_first, above_first, "apart")


# -- the verdict ------------------------------------------------------------------


def verdict(facts: Facts) -> Diagnosis:
    """Name the cause from ``facts``, with the evidence and the next step."""
    shown = identifiers.display(facts.kind, facts.canonical) if facts.canonical else None
    if facts.device is None:
        found = _not_on_the_list(facts, shown)
    else:
        found = _on_the_list(facts, facts.device, shown or facts.typed)
    name, summary, evidence, step, actions = found
    timeline = sorted(facts.events, key=lambda e: e.at)
    return Diagnosis(
        vendor=facts.vendor,
        model=facts.model,
        kind=facts.kind,
        typed=facts.typed,
        identifier=shown,
        verdict=name,
        cause=CAUSES.get(name),
        summary=summary,
        evidence=evidence,
        next_step=step,
        actions=actions,
        device=facts.device,
        timeline=timeline,
        neighbours=list(facts.neighbours),
        strays=list(facts.strays),
        support_contact=facts.support_contact,
    )


_Found = tuple[Verdict, str, list[str], str, list[Action]]


def when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _neighbour_sentences(facts: Facts) -> tuple[list[str], Neighbour | None]:
    evidence = []
    free = [n for n in facts.neighbours if n.owner is None and n.state == "approved"]
    for n in facts.neighbours[:MAX_NEIGHBOURS]:
        held = "unclaimed" if n.owner is None else "already claimed"
        evidence.append(
            f"{identifiers.display(facts.kind, n.identifier)} is approved and {held}; it "
            f"{_HOW.get(n.how, 'is one character away')} from the number given."
        )
    return evidence, (free[0] if len(free) == 1 else None)


_HOW: Final = {
    "look-alike": "differs only by look-alike characters (O/0, I/1, S/5, B/8, Z/2, G/6)",
    "one character": "differs in one character",
    "swapped": "has two neighbouring characters swapped",
    "missing": "has one character the number given lacks",
    "extra": "lacks one character of the number given",
}


def _not_on_the_list(facts: Facts, shown: str | None) -> _Found:
    what = identifiers.kind_name(facts.kind)
    where = f"{facts.vendor}/{facts.model}"
    evidence, only_free = _neighbour_sentences(facts)
    if facts.canonical is None:
        evidence.insert(0, f"{facts.typed!r} is not a valid {what}: {facts.invalid_reason}.")
        if facts.neighbours:
            return _typo(facts, evidence, only_free)
        return (
            Verdict.TYPO,
            f"The number was entered wrong: {facts.typed!r} cannot be a {what}.",
            evidence,
            f"Read the {what} on the device's label again and enter it exactly.",
            [],
        )
    hint = facts.range_hint
    # Inside an approved run every number is one character from an approved one, so
    # there a near neighbour says little; a look-alike misreading still says "typo".
    ranged = hint is not None and hint.relation in ("inside", "after", "before")
    lookalike = any(n.how == "look-alike" for n in facts.neighbours)
    if facts.neighbours and (lookalike or not ranged):
        return _typo(facts, evidence, only_free)
    summary = f"The {what} {shown} is not approved for {where} yet."
    evidence = []
    step = (
        f"If the label really reads {shown}, the vendor approves it (or checks why it was "
        "left out); otherwise re-read the label."
    )
    for model, state in facts.other_models:
        evidence.append(
            f"{shown} is approved for {facts.vendor}/{model} ({state}), another model of "
            "the same vendor."
        )
        step = (
            f"Check which model the device is: if it is a {facts.vendor}/{model}, add it "
            "under that model; if it is a "
            f"{facts.model}, the vendor approves it for {where}."
        )
    if hint is not None and hint.relation != "apart":
        evidence.append(_range_sentence(facts.kind, shown or "", hint))
    elif not facts.other_models:
        evidence.append(f"No approved number of {where} is near {shown}.")
    if facts.neighbours:
        evidence.append(
            f"{len(facts.neighbours)} approved number(s) are one character away (e.g. "
            f"{identifiers.display(facts.kind, facts.neighbours[0].identifier)}), so re-read "
            "the label before approving."
        )
    return Verdict.NOT_APPROVED, summary, evidence, step, [Action.APPROVE]


def _range_sentence(kind: str, shown: str, hint: RangeHint) -> str:
    def d(value: str | None) -> str:
        return identifiers.display(kind, value) if value else "?"

    if hint.relation == "inside":
        return (
            f"{shown} is missing from an approved run ({d(hint.first)} .. {d(hint.last)}): "
            f"{d(hint.below)} and {d(hint.above)} on either side are approved."
        )
    if hint.relation == "after":
        return (
            f"{shown} is the next number after an approved run ({d(hint.first)} .. {d(hint.last)})."
        )
    if hint.relation == "before":
        return (
            f"{shown} is the number just before an approved run ({d(hint.first)} .. "
            f"{d(hint.last)})."
        )
    near = ", ".join(d(v) for v in (hint.below, hint.above) if v)
    return f"{shown} lies close to approved numbers ({near}) but is not one of them."


def _typo(facts: Facts, evidence: list[str], only_free: Neighbour | None) -> _Found:
    what = identifiers.kind_name(facts.kind)
    if only_free is not None:
        better = identifiers.display(facts.kind, only_free.identifier)
        step = f"Add {better} instead, after checking it against the device's label."
    else:
        step = (
            f"Compare the {what} on the label with the approved numbers listed and add "
            "the one it shows."
        )
    return (
        Verdict.TYPO,
        f"The number was most likely entered wrong: {facts.typed!r} is not approved, but "
        f"{'a number' if len(facts.neighbours) == 1 else 'numbers'} one slip away "
        f"{'is' if len(facts.neighbours) == 1 else 'are'}.",
        evidence,
        step,
        [],
    )


def _claim_start(facts: Facts, device: Device) -> datetime | None:
    if device.claimed_at is not None:
        return device.claimed_at
    if not facts.claim_required:
        return device.approved_at  # approval opened the window
    return None


def _on_the_list(facts: Facts, device: Device, shown: str) -> _Found:
    what = identifiers.kind_name(facts.kind)
    where = f"{facts.vendor}/{facts.model}"
    name = f"{what} {shown} ({where})"
    if facts.asking is not None and device.owner is not None and device.owner != facts.asking:
        since = f" since {when(device.claimed_at)}" if device.claimed_at else ""
        return (
            Verdict.CLAIMED_BY_OTHER,
            f"The {name} is claimed by another account, not by {facts.asking}.",
            [
                f"It is claimed by {device.owner}{since}"
                + ("." if device.state == "claimed" else f" and {device.state}.")
            ],
            f"Ask {device.owner} to release it; if {facts.asking} shows it is theirs (a "
            "resale, a mistaken claim), release it with a reason or transfer it to them.",
            [Action.RELEASE, Action.TRANSFER],
        )
    attempts = [e for e in facts.events if e.attempt]
    if device.state == "revoked":
        return (
            Verdict.REVOKED,
            f"The key of the {name} was revoked; it cannot activate until re-enabled.",
            _last_attempt(attempts),
            "Re-enable it to open a new activation window, if the revoke is no longer needed.",
            [Action.REENABLE],
        )
    if device.state == "activated":
        by = f" by client id {device.client_id}" if device.client_id else ""
        at = f" on {when(device.activated_at)}" if device.activated_at else ""
        return (
            Verdict.FINE,
            f"The {name} is activated{at}{by}: nothing is wrong on the bridge's side.",
            [f"It is claimed by {device.owner}."] if device.owner else [],
            "If the device still misbehaves, re-enable it after a factory reset so that "
            "it activates again for a new key.",
            [Action.REENABLE],
        )
    start = _claim_start(facts, device)
    if start is None:
        tried = [e for e in attempts if e.code == "not_claimed"]
        evidence = ["It is approved and nobody has claimed it."]
        if tried:
            evidence.append(
                f"The device tried {sum(e.count for e in tried)} time(s) before anyone "
                f"claimed it, last at {when(tried[-1].last_at or tried[-1].at)}."
            )
        return (
            Verdict.NOT_CLAIMED,
            f"The {name} is approved and free: the owner can add it now.",
            evidence,
            f"The owner adds {shown} to their account (exactly this number), then switches "
            "the device on within its window.",
            [],
        )
    return _device_side(facts, device, start, name, attempts)


def _device_side(
    facts: Facts, device: Device, start: datetime, name: str, attempts: list[Event]
) -> _Found:
    what = identifiers.kind_name(facts.kind)
    since = [e for e in attempts if e.at >= start]
    ends = device.window_ends_at
    closed = ends is not None and ends <= facts.now
    in_window = [e for e in since if ends is None or e.at < ends]
    held = (
        f"It was claimed by {device.owner} on {when(start)}"
        if device.owner
        else (f"Its window opened on {when(start)}")
    )
    window = (
        f"; its window closed on {when(ends)}."
        if closed and ends
        else (f"; its window is open until {when(ends)}." if ends else ".")
    )
    evidence = [held + window]
    refused = [e for e in in_window if e.code != "ok"]
    if refused:
        last = refused[-1]
        why = f" ({last.detail})" if last.detail else ""
        evidence.append(
            f"The device sent this number {sum(e.count for e in refused)} time(s) in the "
            f"window and was refused with {last.code}{why}, last from client id "
            f"{last.client_id or '-'} at {when(last.last_at or last.at)}."
        )
        return (
            Verdict.DEVICE_REFUSED,
            f"The device of the {name} reaches the bridge but its request is refused "
            f"({last.code}): a firmware or configuration problem.",
            evidence,
            f"Work it out with the device's maker: the firmware must send a request the "
            f"bridge accepts ({last.code} is explained in docs/protocol.md).",
            [],
        )
    if facts.strays and not in_window:
        for stray in facts.strays[:3]:
            e = stray.event
            who = f"client id {e.client_id}" if e.client_id else "a device of this model"
            evidence.append(
                f"At {when(e.at)} {who} tried {e.presented!r}, "
                f"which {stray.how} ({e.code}, {e.count} time(s))."
            )
        return (
            Verdict.WRONG_IDENTIFIER,
            f"The device seems to activate with a wrong number: in the claim's window no "
            f"attempt carried {shown_of(facts)}, but attempts carried a number close to it "
            "or of another kind.",
            evidence,
            f"Work it out with the device's maker: the firmware must send the {what} on "
            f"its label, {shown_of(facts)}"
            + ("; then re-enable it to open a new window." if closed else "."),
            [Action.REENABLE] if closed else [],
        )
    if closed:
        late = [e for e in since if ends is not None and e.at >= ends]
        if late:
            evidence.append(
                f"Its first attempt came at {when(late[0].at)}, after the window closed "
                f"({late[0].code})."
            )
        else:
            evidence.append("No attempt with this number reached the bridge since the claim.")
        return (
            Verdict.WINDOW_CLOSED,
            f"The activation window of the {name} closed before the device's first attempt.",
            evidence,
            "Open a new window (re-enable), then switch the device on while it is open"
            + ("." if late else " and check that it reaches the broker."),
            [Action.REENABLE],
        )
    evidence.append("No attempt with this number, or a number close to it, reached the bridge.")
    return (
        Verdict.NEVER_TRIED,
        f"The device of the {name} has not tried to activate since it was claimed: a "
        "connectivity problem, not an identity one.",
        evidence,
        "Check that the device is switched on, online, and configured with this bridge's "
        "broker address and topic prefix.",
        [],
    )


def _last_attempt(attempts: Sequence[Event]) -> list[str]:
    if not attempts:
        return []
    last = attempts[-1]
    return [f"Its last attempt was at {when(last.last_at or last.at)} ({last.code})."]


def shown_of(facts: Facts) -> str:
    return identifiers.display(facts.kind, facts.canonical) if facts.canonical else facts.typed


def classify(
    kind: str, claimed: str, attempts: Iterable[Event], pattern: str | None = None
) -> list[Stray]:
    """The attempts (of the model, in the claim's window) whose number is a near miss of
    ``claimed`` or of another kind; the others may be other devices and are left out."""
    strays = []
    for e in attempts:
        how = difference(kind, claimed, e.presented or "", e.identifier)
        if how is not None:
            strays.append(Stray(e, how))
    return strays
