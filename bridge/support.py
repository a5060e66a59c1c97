"""The support desk's use case: diagnose one number, and resolve it from the same place.

:meth:`SupportDesk.diagnose` gathers the facts (:mod:`bridge.db.diagnosis`) and lets
:func:`bridge.diagnosis.verdict` name the cause. :meth:`SupportDesk.resolve` acts through
the same :class:`bridge.admin.Admin` transitions the command line and the HTTP API use
(release, transfer, approve, re-enable), audited with the support person as the actor
and their reason in the entry's detail. An owner's view (``owner=``) is built from facts
that hold nothing of other accounts: no other owner's name, actor or client id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from bridge import diagnosis, identifiers, text
from bridge.codes import Code
from bridge.db import diagnosis as queries
from bridge.diagnosis import Action, Device, Diagnosis, Event, Facts, Stray
from bridge.errors import InvalidIdentifier, Malformed, NotClaimed, NotFound
from bridge.records import ModelRow

if TYPE_CHECKING:
    from bridge.admin import Admin


@dataclass(frozen=True)
class HistoryEntry:
    """One line of an owner's history: what happened to one of their devices."""

    at: datetime
    action: str
    vendor: str
    model: str
    identifier: str  # shown the way people read it
    by: str  # "you", "the vendor" or "an administrator"
    reason: str | None


def reason_of(detail: str | None) -> str | None:
    """The reason recorded in an audit entry's detail.

    Written by ``bridge_audit_detail`` (schemas/functions/transitions/_common.sql).
    """
    if not detail:
        return None
    head, sep, reason = detail.partition("reason: ")
    return reason if sep and (not head or head.endswith("; ")) else None


def _transferred_from(event: Event, owner: str) -> bool:
    # A transfer's entry names the new owner; the previous one is in its detail.
    detail = event.detail or ""
    return (
        event.action == "transfer"
        and event.code == "ok"
        and (detail == f"from {owner}" or detail.startswith(f"from {owner}; "))
    )


#: Activation codes that say the attempt's number is on no approval list of the model.
_NOT_LISTED: Final = frozenset({Code.NOT_APPROVED, Code.INVALID_IDENTIFIER, Code.MALFORMED})


def _owners_to_see(stray: Stray) -> bool:
    """Whether an owner may see an attempt in their claim's window that carried another
    number: only a near miss of theirs (likely their own device) on nobody's list."""
    if stray.event.identifier is None:
        # Another kind, or no number at all, is tied to their device only by model and
        # time: it may be anyone's device, and what it sent is not theirs to read. A
        # near miss that is not valid reads "differs in one character and is not ...".
        return stray.how.startswith("differs")
    # The code of an attempt with an approved number says whether it is claimed.
    return stray.event.code in _NOT_LISTED


def _by(actor: str | None, owner: str) -> str:
    # The actor as an owner may see it: never another account's name or token id.
    if actor is None:
        return "the bridge"
    if actor == "device":
        return "your device"
    if actor.startswith(f"api:owner:{owner}:"):
        return "you"
    if actor.startswith("api:admin"):
        return "an administrator"
    return "the vendor"


class SupportDesk:
    """Diagnosis and resolution over one :class:`Admin` (its store, role and actor)."""

    def __init__(self, admin: Admin) -> None:
        self._admin = admin
        self._store = admin.store

    async def diagnose(
        self,
        vendor: str,
        model: str,
        number: str,
        *,
        asking: str | None = None,
        owner: str | None = None,
        now: datetime | None = None,
    ) -> Diagnosis:
        """The number's state, timeline and verdict.

        ``asking``: the person trying to add the device (so "claimed by someone else"
        can be told). ``owner``: answer an owner, about a device they hold or held;
        anything else is NotFound, worded as for a device that does not exist.
        """
        row = await self._admin.model(vendor, model)
        if owner is not None:
            # Before any other read: a number that was never the owner's costs them
            # the same (and takes the same time) whether it is claimed, free or unknown.
            await self._ever_theirs(row, number, owner)
        facts = await self._facts(row, number, asking=asking, now=now or datetime.now(UTC))
        if owner is None:
            return diagnosis.verdict(facts)
        return await self._for_owner(row, facts, owner)

    async def _ever_theirs(self, row: ModelRow, number: str, owner: str) -> None:
        """NotFound, worded as for a device that does not exist, unless ``owner`` holds
        or held the number."""
        try:
            canonical: str | None = identifiers.normalize(row.kind, number, row.pattern)
        except InvalidIdentifier:
            canonical = None
        if canonical is None or not await queries.ever_claimed_by(
            self._store, row, canonical, owner
        ):
            what = identifiers.kind_name(row.kind)
            shown = identifiers.display(row.kind, canonical) if canonical else number
            raise NotFound(
                f"There is no {what} {shown} of {row.vendor}/{row.model} in your account."
            )

    async def _facts(
        self, row: ModelRow, number: str, *, asking: str | None, now: datetime
    ) -> Facts:
        store = self._store
        try:
            canonical: str | None = identifiers.normalize(row.kind, number, row.pattern)
            invalid = None
        except InvalidIdentifier as exc:
            canonical, invalid = None, exc.reason
        facts = Facts(
            vendor=row.vendor,
            model=row.model,
            kind=row.kind,
            typed=number,
            canonical=canonical,
            invalid_reason=invalid,
            now=now,
            claim_required=row.claim_required,
            asking=asking,
            support_contact=await queries.support_contact(store, row),
        )
        found = await queries.device(store, row, canonical) if canonical else None
        events = await queries.timeline(store, row, canonical) if canonical else []
        if found is not None:
            assert canonical is not None
            device = found[1]
            # Held by someone other than the person asking: that is the verdict, and the
            # device's own attempts are not read.
            elsewhere = asking is not None and device.owner not in (None, asking)
            return dataclasses.replace(
                facts,
                device=device,
                events=events,
                strays=[] if elsewhere else await self._strays(row, canonical, device, now),
            )
        candidates = diagnosis.near_misses(row.kind, number, row.pattern)
        near = await queries.approved_among(
            store, row, candidates, identifiers.lookalike_key(row.kind, number)
        )
        # A look-alike match counts only as "did you mean" does: one or two misread
        # characters, never the number itself.
        near = [
            n
            for n in near
            if n.how != "look-alike" or identifiers.suggestion_ok(number, n.identifier)
        ]
        hint = None
        if canonical is not None:
            below, above = await queries.around(store, row, canonical)
            hint = diagnosis.range_hint(row.kind, canonical, below, above)
        pairs = []
        for other in await queries.vendor_models(store, row):
            try:
                pairs.append((other.id, identifiers.normalize(other.kind, number, other.pattern)))
            except InvalidIdentifier:
                continue
        return dataclasses.replace(
            facts,
            events=events,
            neighbours=near,
            range_hint=hint,
            other_models=await queries.approved_elsewhere(store, pairs),
        )

    async def _strays(
        self, row: ModelRow, canonical: str, device: Device, now: datetime
    ) -> list[Stray]:
        """Attempts in the claim's window with a near miss or a number of another kind."""
        if device.state not in ("claimed", "approved"):
            return []
        start = device.claimed_at or (None if row.claim_required else device.approved_at)
        if start is None:
            return []
        end = min(device.window_ends_at or now, now)
        candidates = diagnosis.near_misses(row.kind, canonical, row.pattern)
        attempts = await queries.window_attempts(self._store, row, list(candidates), start, end)
        return diagnosis.classify(row.kind, canonical, attempts, row.pattern)

    async def _for_owner(self, row: ModelRow, facts: Facts, owner: str) -> Diagnosis:
        what = identifiers.kind_name(row.kind)
        shown = (
            identifiers.display(row.kind, facts.canonical) if facts.canonical else number_of(facts)
        )
        if facts.device is None:  # unapproved since _ever_theirs looked
            raise NotFound(
                f"There is no {what} {shown} of {row.vendor}/{row.model} in your account."
            )
        mine = [
            dataclasses.replace(
                e,
                actor=_by(e.actor, owner),
                detail=reason_of(e.detail),
                owner=owner if e.owner == owner else None,
            )
            for e in facts.events
            if e.owner == owner or _transferred_from(e, owner)
        ]
        if facts.device.owner != owner:
            released = [e for e in mine if e.action in ("release", "transfer")]
            evidence = [
                f"It left your account on {diagnosis.when(e.at)} ({e.action}, by {e.actor})"
                + (f": {e.detail}." if e.detail else ".")
                for e in released[-1:]
            ]
            return Diagnosis(
                vendor=row.vendor,
                model=row.model,
                kind=row.kind,
                typed=facts.typed,
                identifier=shown,
                verdict=diagnosis.Verdict.CLAIMED_BY_OTHER,
                cause=2,
                summary=f"The {what} {shown} ({row.vendor}/{row.model}) is no longer in "
                "your account.",
                evidence=evidence,
                next_step="If you believe it is still yours, contact the vendor's support"
                + (f" ({facts.support_contact})." if facts.support_contact else "."),
                actions=[],
                device=None,
                timeline=mine,
                support_contact=facts.support_contact,
            )
        device = facts.device
        if device.activated_at is None:
            # Release and transfer clear activated_at, not the client id: until the
            # device activates in this claim, the id is a previous owner's device's.
            device = dataclasses.replace(device, client_id=None)
        private = dataclasses.replace(
            facts,
            asking=None,
            device=device,
            events=mine,
            strays=[
                Stray(dataclasses.replace(s.event, client_id=None, owner=None), s.how)
                for s in facts.strays
                if _owners_to_see(s)
            ],
            neighbours=(),
            other_models=(),
            range_hint=None,
        )
        found = diagnosis.verdict(private)
        return dataclasses.replace(found, actions=[])

    async def resolve(
        self,
        vendor: str,
        model: str,
        number: str,
        action: Action | str,
        *,
        reason: str | None,
        to: str | None = None,
        actor: str | None = None,
    ) -> str:
        """Act on the number through the Admin transition; returns one sentence.

        ``release`` (whoever holds it; a reason is required, and the previous owner sees
        it in their history), ``transfer`` to ``to`` (a reason is required), ``approve``,
        ``reenable`` (open a new window).
        """
        action = Action(action)
        why = reason
        if why is not None:
            text.check_text("reason", why, text.REASON_MAX, spaces=False)
        if action in (Action.RELEASE, Action.TRANSFER) and why is None:
            raise Malformed(f"A support {action} needs a reason, recorded in the audit log.")
        admin = self._admin
        row = await admin.model(vendor, model)
        what = identifiers.kind_name(row.kind)
        if action is Action.APPROVE:
            report = await admin.approve(vendor, model, [number], actor=actor, reason=why)
            canonical = identifiers.normalize(row.kind, number, row.pattern)
            shown = identifiers.display(row.kind, canonical)
            if not report.added:
                return f"The {what} {shown} was already approved for {vendor}/{model}."
            return f"The {what} {shown} is now approved for {vendor}/{model}."
        if action is Action.REENABLE:
            result = await admin.reenable(vendor, model, number, actor=actor, reason=why)
            shown = identifiers.display(row.kind, result.identifier)
            return (
                f"A new activation window is open for the {what} {shown} ({vendor}/{model}); "
                "the device can activate now."
            )
        canonical = identifiers.normalize(row.kind, number, row.pattern)
        shown = identifiers.display(row.kind, canonical)
        found = await queries.device(self._store, row, canonical)
        holder = found[1].owner if found else None
        if found is not None and holder is None:
            raise NotClaimed(
                f"The {what} {shown} ({vendor}/{model}) is not claimed by anyone, so there "
                f"is nothing to {action}."
            )
        if action is Action.RELEASE:
            # The holder read just now; if it changes meanwhile the release is refused
            # (not_owner) rather than releasing someone else's claim.
            await admin.release(vendor, model, number, owner=holder or "", actor=actor, reason=why)
            return (
                f"The {what} {shown} ({vendor}/{model}) was released from {holder}'s account; "
                "they see the reason in their history, and anyone may now claim it."
            )
        if to is None:
            raise Malformed("A transfer needs the account to transfer the device to.")
        # A vendor's support names accounts here (before, only an administrator did): a
        # name with a right-to-left override or a zero-width space would display as
        # another account's in the audit log and on the support page.
        text.check_text("new owner's name", to, text.PERSON_MAX, spaces=True)
        if to != to.strip():
            raise Malformed(f"The new owner's name {to!r} must not start or end with a space.")
        target = to
        # Only from the holder diagnosed just now: released and claimed again meanwhile,
        # it stays with its new holder (NotOwner), as a release does.
        await admin.transfer(
            vendor, model, number, to=target, actor=actor, reason=why, holder=holder or ""
        )
        return (
            f"The {what} {shown} ({vendor}/{model}) now belongs to {target} (it was {holder}'s); "
            "its activation window is open."
        )

    async def set_contact(
        self, vendor: str, model: str, contact: str | None, *, actor: str
    ) -> str | None:
        """Set (or clear) the support contact shown for the model's devices."""
        row = await self._admin.model(vendor, model)
        value = contact or None
        if value is not None:
            text.check_text("support contact", value, text.CONTACT_MAX, spaces=False)
        await queries.set_support_contact(self._store, row, value, actor=actor)
        return value

    async def contact(self, vendor: str, model: str) -> str | None:
        return await queries.support_contact(self._store, await self._admin.model(vendor, model))

    async def history(self, owner: str, limit: int = 50) -> list[HistoryEntry]:
        """What happened to ``owner``'s devices (claims, releases with their reason...)."""
        return [
            HistoryEntry(
                at=e.at,
                action=e.action,
                vendor=vendor,
                model=model,
                identifier=identifiers.display(kind, e.identifier or "")
                if kind
                else e.identifier or "",
                by=_by(e.actor, owner),
                reason=reason_of(e.detail),
            )
            for e, vendor, model, kind in await queries.owner_history(self._store, owner, limit)
        ]


def number_of(facts: Facts) -> str:
    return facts.typed


__all__ = ["Event", "HistoryEntry", "SupportDesk", "reason_of"]
