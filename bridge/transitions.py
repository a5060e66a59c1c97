"""The device lifecycle, one use case per transition, each with its side effects.

Approve, bulk approve, claim, unapprove, release, transfer, re-enable and revoke are
each decided by one database function (``schemas/functions/transitions/<name>.sql``,
called through :mod:`bridge.db.transitions`): one round trip, one transaction, the
audit row written inside it. What belongs to a transition but not to the database is
attached here, once: reading the identifier as the model spells it, the refusal
sentence, and, after the commit, closing the broker login that held a key that stopped
being valid. :class:`bridge.admin.Admin` (and through it the command line and the HTTP
API) delegates each lifecycle operation here; activation, the device's own transition,
is decided by ``schemas/functions/transitions/activate.sql`` through the provisioner.

Every lifecycle operation takes ``actor`` (who is recorded in the audit row: a support
desk may name the person behind a shared login) and ``reason`` (kept in the audit row's
detail, so that the owner concerned sees why in their history).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bridge import approval_file, identifiers, text
from bridge.approval_file import Refusal
from bridge.codes import Code
from bridge.config import Settings
from bridge.errors import (
    BrokerAdminError,
    ClaimedByOther,
    Conflict,
    Forbidden,
    InvalidIdentifier,
    Malformed,
    NotApproved,
    NotClaimed,
    NotOwner,
    RequestError,
    UnknownModel,
)
from bridge.records import LifecycleOutcome, ModelRow

if TYPE_CHECKING:  # the use case holds a store; it never touches the driver itself
    from bridge.store import Store
    from bridge.tokens import Role

#: ``progress(phase, done, total)``: lines of the file imported so far, of ``total``.
Progress = Callable[[str, int, int], None]

log = logging.getLogger("bridge.transitions")


@dataclass(frozen=True)
class ApproveReport:
    added: int
    already: int


@dataclass(frozen=True)
class ImportReport:
    """What an approval file did (or, with ``dry_run``, would do).

    ``refused`` lists the first 1,000 refused rows; ``refused_total`` counts them all.
    """

    added: int
    already: int
    duplicates: int
    refused: list[Refusal]
    dry_run: bool
    refused_total: int = 0


@dataclass(frozen=True)
class UnapproveReport:
    removed: list[str]
    missing: list[str]


@dataclass(frozen=True)
class LifecycleResult:
    """A release, transfer, reenable or revoke that happened."""

    identifier: str
    previous_owner: str | None
    previous_state: str | None
    window_ends_at: datetime | None = None
    #: The client id whose broker login held the key (closed by revoke, release, transfer).
    login: str | None = None
    #: The broker could not be told: the login still opens it until disabled by hand.
    login_lingers: bool = False


@dataclass(frozen=True)
class ClaimResult:
    identifier: str
    window_ends_at: datetime | None
    already_yours: bool


async def model_row(store: Store, vendor: str, model: str) -> ModelRow:
    """The registered model, or :class:`UnknownModel` saying what to check."""
    row = await store.get_model(vendor, model)
    if row is None:
        raise UnknownModel(
            f"The model {vendor}/{model} is not registered; check the vendor and model names."
        )
    return row


class Lifecycle:
    """The lifecycle transitions as one asker (``role``, default ``actor``) makes them.

    ``settings`` say how to reach the broker, whose device logins revoke, release,
    transfer and unapprove close after their commit.
    """

    def __init__(self, store: Store, *, settings: Settings, actor: str, role: Role) -> None:
        self._store = store
        self._settings = settings
        self._actor = actor
        self._role = role  # who asks: an owner cannot undo a vendor's revoke

    # -- approval list -------------------------------------------------------------

    async def approve(
        self,
        vendor: str,
        model: str,
        numbers: Iterable[str],
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ApproveReport:
        """Approve identifiers (any accepted spelling); all or nothing on a bad one."""
        who, why = self._asker(actor, reason)
        row = await model_row(self._store, vendor, model)
        pairs = []
        for number in numbers:
            canonical = identifiers.normalize(row.kind, number, row.pattern)
            pairs.append((canonical, identifiers.lookalike_key(row.kind, canonical)))
        if not pairs:
            raise Malformed("No identifier was given to approve.")
        added, already = await self._store.approve(row, pairs, actor=who, reason=why)
        return ApproveReport(added, already)

    async def approve_file(
        self,
        vendor: str,
        model: str,
        path: Path,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ImportReport:
        """Approve a file of identifiers (see :mod:`bridge.approval_file`) in one transaction."""
        total = approval_file.count_lines(path) if progress is not None else 0
        return await self.approve_rows(
            vendor,
            model,
            approval_file.read_rows(path),
            dry_run=dry_run,
            progress=progress,
            total_lines=total,
            source=path.name,
            actor=actor,
            reason=reason,
        )

    async def approve_rows(
        self,
        vendor: str,
        model: str,
        rows: Iterable[tuple[int, str]],
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        total_lines: int = 0,
        source: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ImportReport:
        """Approve (line number, text) rows; bad rows are reported, the others loaded by COPY.

        The rows are parsed in a worker thread a batch ahead of the database, so
        parsing (Python) and inserting (PostgreSQL) use both cores at once.
        Memory is two batches of identifiers whatever the rows: ranges are
        expanded lazily and duplicates are found by the database.
        """
        who, why = self._asker(actor, reason)
        row = await model_row(self._store, vendor, model)
        parsed = approval_file.ParsedRows()
        batches = approval_file.parse_batches(row.kind, row.pattern, rows, parsed)

        def next_batch() -> tuple[list[tuple[str, str]], int] | None:
            values = next(batches, None)
            if values is None:
                return None
            pairs = [(v, identifiers.lookalike_key(row.kind, v)) for v in values]
            return pairs, parsed.last_line

        added = already = duplicates = 0
        async with self._store.bulk_approver(
            row,
            actor=who,
            detail=f"from {source}" if source else None,
            reason=why,
            dry_run=dry_run,
        ) as load:
            pending = asyncio.ensure_future(asyncio.to_thread(next_batch))
            try:
                while (batch := await pending) is not None:
                    pending = asyncio.ensure_future(asyncio.to_thread(next_batch))
                    new, old, again = await load(batch[0])
                    added, already, duplicates = added + new, already + old, duplicates + again
                    if progress is not None:
                        progress("importing", batch[1], total_lines)
            finally:
                # The worker thread cannot be cancelled; let it finish its batch
                # before the transaction ends.
                await asyncio.wait([pending])
                if not pending.cancelled():
                    pending.exception()  # retrieved: the error that matters is already raised
        if progress is not None:
            progress("importing", total_lines, total_lines)
        return ImportReport(
            added, already, duplicates, parsed.refused, dry_run, parsed.refused_total
        )

    async def unapprove(
        self,
        vendor: str,
        model: str,
        numbers: Iterable[str],
        *,
        force: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> UnapproveReport:
        """Take identifiers off the approval list; devices in use need ``force``."""
        who, why = self._asker(actor, reason)
        row = await model_row(self._store, vendor, model)
        canonical = [identifiers.normalize(row.kind, n, row.pattern) for n in numbers]
        if not canonical:
            raise Malformed("No identifier was given to unapprove.")
        outcome = await self._store.unapprove(row, canonical, force=force, actor=who, reason=why)
        if outcome.in_use and not force:
            shown = "; ".join(
                f"{identifiers.display(row.kind, i)} is {state}" + (f" by {owner}" if owner else "")
                for i, owner, state in outcome.in_use[:5]
            )
            more = f" and {len(outcome.in_use) - 5} more" if len(outcome.in_use) > 5 else ""
            raise Conflict(
                f"Nothing was unapproved because devices are in use ({shown}{more}); "
                "release them first, or repeat with --force to remove them anyway."
            )
        # A removed device's key must not keep opening the broker either.
        await self._close_logins(outcome.logins)
        return UnapproveReport(outcome.removed, outcome.missing)

    # -- ownership -----------------------------------------------------------------

    async def claim(
        self,
        vendor: str,
        model: str,
        number: str,
        *,
        owner: str,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ClaimResult:
        """Add a device to ``owner``'s account; opens the activation window."""
        if not 1 <= len(owner) <= text.PERSON_MAX:
            raise Malformed(f"The owner name must be 1 to {text.PERSON_MAX} characters.")
        who, why = self._asker(actor, reason)
        row = await model_row(self._store, vendor, model)
        try:
            return await self._claim(row, number, owner=owner, actor=who, reason=why)
        except RequestError as exc:
            # Whom the owner asks next: the vendor's support contact, set per model.
            exc.support_contact = row.support_contact
            raise

    async def _claim(
        self, row: ModelRow, number: str, *, owner: str, actor: str, reason: str | None
    ) -> ClaimResult:
        what = identifiers.kind_name(row.kind)
        try:
            canonical = identifiers.normalize(row.kind, number, row.pattern)
        except InvalidIdentifier as exc:
            suggestion = await self._suggest(row, number)
            if suggestion:
                hinted = InvalidIdentifier(
                    exc.kind, exc.presented, f"{exc.reason}; did you mean {suggestion}?"
                )
                hinted.suggestion = suggestion
                raise hinted from exc
            raise
        outcome = await self._store.claim(row, canonical, owner=owner, actor=actor, reason=reason)
        shown = identifiers.display(row.kind, canonical)
        if outcome.status == Code.NOT_APPROVED:
            suggestion = await self._suggest(row, number)
            hint = (
                f"did you mean {suggestion}?"
                if suggestion
                else f"please verify the exact {what} on the device's label, or contact the vendor."
            )
            refused = NotApproved(
                f"You have attempted to add a {what} {shown} that is not approved for this "
                f"device ({row.vendor}/{row.model}); {hint}"
            )
            refused.suggestion = suggestion
            raise refused
        if outcome.status == Code.CLAIMED_BY_OTHER:
            raise ClaimedByOther(
                f"The {what} {shown} ({row.vendor}/{row.model}) is still claimed by another "
                "account; ask its previous owner to release it, or contact the vendor."
            )
        return ClaimResult(canonical, outcome.window_ends_at, outcome.status == Code.ALREADY_YOURS)

    async def release(
        self,
        vendor: str,
        model: str,
        number: str,
        *,
        owner: str,
        actor: str | None = None,
        reason: str | None = None,
    ) -> LifecycleResult:
        """The owner gives the device up: its key stops being valid (in the database and
        on the broker), another owner may claim it. A vendor-revoked device stays revoked.

        The audit row names ``owner`` (the previous owner), so a release made for them
        (say, by a support desk, with a ``reason``) shows in their history."""
        who, why = self._asker(actor, reason)
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.release(row, canonical, owner=owner, actor=who, reason=why)
        if outcome.status == Code.NOT_OWNER:
            raise NotOwner(
                f"The {_named(row, canonical)} is not claimed by {owner}; only the "
                "account that claimed it can release it (or ask the vendor to transfer it)."
            )
        return await self._closed(_result(row, canonical, outcome, nothing="release"))

    async def transfer(
        self,
        vendor: str,
        model: str,
        number: str,
        *,
        to: str,
        actor: str | None = None,
        reason: str | None = None,
        holder: str | None = None,
    ) -> LifecycleResult:
        """An administrator moves a claimed device to another owner (audited).

        The previous owner's key is revoked, in the database and on the broker; the new
        owner's activation window opens (a revoked device stays revoked). With ``holder``
        (the owner the caller saw), only if the device is still theirs.
        """
        if not 1 <= len(to) <= text.PERSON_MAX:
            raise Malformed(f"The owner name must be 1 to {text.PERSON_MAX} characters.")
        who, why = self._asker(actor, reason)
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.transfer(
            row, canonical, to=to, actor=who, reason=why, holder=holder
        )
        if outcome.status == Code.NOT_OWNER:
            raise NotOwner(
                f"The {_named(row, canonical)} is no longer claimed by {holder}; "
                "nothing was transferred: look at it again."
            )
        if outcome.status == Code.ALREADY_THEIRS:
            raise Conflict(f"The {_named(row, canonical)} already belongs to {to}.")
        return await self._closed(_result(row, canonical, outcome, nothing="transfer"))

    # -- keys ----------------------------------------------------------------------

    async def reenable(
        self,
        vendor: str,
        model: str,
        number: str,
        *,
        window_seconds: int | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> LifecycleResult:
        """Open a new activation window; the next activation issues a new key, which then
        replaces the old one on the broker too. An owner cannot undo a vendor's revoke."""
        if window_seconds is not None and window_seconds <= 0:
            raise Malformed("The activation window must be at least one second.")
        who, why = self._asker(actor, reason)
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.reenable(
            row,
            canonical,
            window_seconds=window_seconds or row.window_seconds,
            by=self._role.value,
            actor=who,
            reason=why,
        )
        if outcome.status == Code.REVOKED_BY_VENDOR:
            raise Forbidden(
                f"The {_named(row, canonical)} was revoked by its vendor; only the "
                "vendor or an administrator can re-enable it."
            )
        return _result(row, canonical, outcome, nothing="re-enable")

    async def revoke(
        self,
        vendor: str,
        model: str,
        number: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> LifecycleResult:
        """The key stops being valid now, in the database and on the broker; activation
        answers revoked until re-enabled."""
        who, why = self._asker(actor, reason)
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.revoke(
            row, canonical, by=self._role.value, actor=who, reason=why
        )
        if outcome.status == Code.ALREADY_REVOKED:
            raise Conflict(
                f"The {_named(row, canonical)} is already revoked; "
                "re-enable it to let it activate again."
            )
        return await self._closed(_result(row, canonical, outcome, nothing="revoke"))

    # -- side effects after commit -------------------------------------------------

    async def _closed(self, result: LifecycleResult) -> LifecycleResult:
        """After a committed revoke, release or transfer: the key must stop opening the
        broker too. The database change stands if the broker cannot be told; that is
        logged and reported (``login_lingers``)."""
        if result.login is None or await self._close_logins([result.login]):
            return result
        return dataclasses.replace(result, login_lingers=True)

    async def _close_logins(self, logins: list[str]) -> bool:
        """Disable these device logins on the broker; False (and a warning) if it failed."""
        if not logins:
            return True
        # Imported here: only brokers with device logins need the MQTT client at all.
        from bridge.dynsec import disable_device_logins  # noqa: PLC0415

        try:
            await disable_device_logins(self._settings, logins)
        except BrokerAdminError as exc:
            log.warning(
                "the key no longer activates, but the broker login(s) %s could not be "
                "disabled: %s; disable them on the broker by hand",
                ", ".join(repr(n) for n in logins[:10]),
                exc.message,
                extra={"event": "broker_login_lingers", "client_id": logins[0]},
            )
            return False
        return True

    # -- helpers -------------------------------------------------------------------

    def _asker(self, actor: str | None, reason: str | None) -> tuple[str, str | None]:
        """The actor and reason to record: checked, since both are shown to people."""
        if actor is not None:
            text.check_text("actor", actor, text.PERSON_MAX, spaces=True)
        if reason is not None:
            text.check_text("reason", reason, text.REASON_MAX, spaces=False)
        return (actor if actor is not None else self._actor), reason

    async def _device(self, vendor: str, model: str, number: str) -> tuple[ModelRow, str]:
        row = await model_row(self._store, vendor, model)
        return row, identifiers.normalize(row.kind, number, row.pattern)

    async def _suggest(self, model: ModelRow, typed: str) -> str | None:
        """An approved identifier differing from ``typed`` only by look-alike characters."""
        key = identifiers.lookalike_key(model.kind, typed)
        for candidate in await self._store.lookalikes(model, key):
            if identifiers.suggestion_ok(typed, candidate):
                return identifiers.display(model.kind, candidate)
        return None


def _named(row: ModelRow, canonical: str) -> str:
    return (
        f"{identifiers.kind_name(row.kind)} {identifiers.display(row.kind, canonical)} "
        f"({row.vendor}/{row.model})"
    )


def _result(
    row: ModelRow, canonical: str, outcome: LifecycleOutcome, *, nothing: str
) -> LifecycleResult:
    if outcome.status == Code.NOT_APPROVED:
        raise NotApproved(
            f"The {_named(row, canonical)} is not on the approval list; "
            "check the number on the device's label."
        )
    if outcome.status == Code.NOT_CLAIMED:
        raise NotClaimed(
            f"The {_named(row, canonical)} is not claimed by anyone, so there is "
            f"nothing to {nothing}; claim it first."
        )
    assert outcome.status == Code.OK, outcome.status
    return LifecycleResult(
        canonical, outcome.owner, outcome.state, outcome.window_ends_at, outcome.login
    )
