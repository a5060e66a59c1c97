"""The vendor, owner and administrator operations, as a Python API.

The ``bridge`` command line is a thin layer over this module, and a portal can
call the same operations::

    async with Admin.connect(load_settings()) as admin:
        await admin.add_model("acme", "thermo-1", kind="mac")
        await admin.approve("acme", "thermo-1", ["00:1A:2B:3C:4D:5E"])
        await admin.claim("acme", "thermo-1", "001a.2b3c.4d5e", owner="alice")
        report = await admin.approve_file("acme", "thermo-1", Path("numbers.csv"))
        await admin.release("acme", "thermo-1", "00:1A:2B:3C:4D:5E", owner="alice")
        entries = await admin.audit(identifier="00:1A:2B:3C:4D:5E", vendor="acme", model="thermo-1")

Every refusal is a :class:`bridge.errors.RequestError` whose message speaks to a
person at a portal. Every operation is one transaction and is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from bridge import approval_file, embedded, identifiers, keys
from bridge.approval_file import Refusal
from bridge.config import Settings
from bridge.errors import (
    BrokerAdminError,
    ClaimedByOther,
    ConfigError,
    Conflict,
    InvalidIdentifier,
    Malformed,
    NotApproved,
    NotClaimed,
    NotOwner,
    UnknownModel,
)
from bridge.records import AuditQuery, AuditRecord, DeviceRow, LifecycleOutcome, ModelRow
from bridge.store import Store

#: Device states, as ``bridge list --state`` accepts them.
STATES: Final = ("approved", "claimed", "activated", "revoked")

#: ``progress(phase, done, total)``: lines of the file imported so far, of ``total``.
Progress = Callable[[str, int, int], None]


log = logging.getLogger("bridge.admin")


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


@dataclass(frozen=True)
class ClaimResult:
    identifier: str
    window_ends_at: datetime | None
    already_yours: bool


class Admin:
    """Administrative operations on one store."""

    def __init__(
        self,
        store: Store,
        *,
        actor: str = "cli",
        hasher: keys.KeyHasher | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._store = store
        self._actor = actor
        self._hasher = hasher  # only verify_key needs the server secret
        self._settings = settings  # only closing broker logins needs the broker's address

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, settings: Settings, *, actor: str = "cli") -> AsyncIterator[Admin]:
        """Open the configured (or embedded) database; migrates the embedded one."""
        dsn = embedded.database_url(settings)
        async with Store.open(dsn, pool_size=2) as store:
            if embedded.is_embedded_database(settings):
                await store.migrate()
            yield cls(store, actor=actor, hasher=_hasher(settings), settings=settings)

    @property
    def store(self) -> Store:
        return self._store

    async def add_model(
        self,
        vendor: str,
        model: str,
        *,
        kind: str,
        pattern: str | None = None,
        window_seconds: int = 86_400,
        claim_required: bool = True,
    ) -> ModelRow:
        try:
            kind = identifiers.Kind(kind).value
        except ValueError as exc:
            kinds = ", ".join(k.value for k in identifiers.Kind)
            raise Malformed(f"The kind {kind!r} is not one of {kinds}.") from exc
        for label, value in (("vendor", vendor), ("model", model)):
            if not 1 <= len(value) <= 64:
                raise Malformed(f"The {label} name must be 1 to 64 characters.")
        if pattern is not None:
            if kind != identifiers.Kind.SERIAL:
                raise Malformed("A --pattern applies only to models whose kind is serial.")
            _check_pattern(pattern)
        if window_seconds <= 0:
            raise Malformed("The activation window must be at least one second.")
        row = await self._store.add_model(
            vendor=vendor,
            model=model,
            kind=kind,
            pattern=pattern,
            window_seconds=window_seconds,
            claim_required=claim_required,
            actor=self._actor,
        )
        if row is None:
            raise Conflict(f"The model {vendor}/{model} is already registered.")
        return row

    async def model(self, vendor: str, model: str) -> ModelRow:
        row = await self._store.get_model(vendor, model)
        if row is None:
            raise UnknownModel(
                f"The model {vendor}/{model} is not registered; check the vendor and model names."
            )
        return row

    async def unusable_patterns(self) -> list[str]:
        """One sentence per stored model whose serial pattern this bridge refuses.

        Such a model predates RE2 patterns (see :func:`bridge.identifiers.check_pattern`);
        every serial number of it is refused until its pattern is replaced.
        """
        return [
            f"The model {row.vendor}/{row.model} has the pattern {row.pattern!r}, which "
            f"this bridge does not accept ({reason}); every serial number of it is refused "
            "until the pattern is replaced."
            for row in await self._store.patterned_models()
            if row.pattern is not None
            and (reason := identifiers.unusable_pattern(row.pattern)) is not None
        ]

    async def approve(self, vendor: str, model: str, numbers: Iterable[str]) -> ApproveReport:
        """Approve identifiers (any accepted spelling); all or nothing on a bad one."""
        row = await self.model(vendor, model)
        pairs = []
        for text in numbers:
            canonical = identifiers.normalize(row.kind, text, row.pattern)
            pairs.append((canonical, identifiers.lookalike_key(row.kind, canonical)))
        if not pairs:
            raise Malformed("No identifier was given to approve.")
        added, already = await self._store.approve(row, pairs, actor=self._actor)
        return ApproveReport(added, already)

    async def claim(self, vendor: str, model: str, number: str, *, owner: str) -> ClaimResult:
        """Add a device to ``owner``'s account; opens the activation window."""
        if not 1 <= len(owner) <= 128:
            raise Malformed("The owner name must be 1 to 128 characters.")
        row = await self.model(vendor, model)
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
        outcome = await self._store.claim(row, canonical, owner=owner, actor=self._actor)
        shown = identifiers.display(row.kind, canonical)
        if outcome.status == "not_approved":
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
        if outcome.status == "claimed_by_other":
            raise ClaimedByOther(
                f"The {what} {shown} ({row.vendor}/{row.model}) is still claimed by another "
                "account; ask its previous owner to release it, or contact the vendor."
            )
        return ClaimResult(canonical, outcome.window_ends_at, outcome.status == "already_yours")

    async def approve_file(
        self,
        vendor: str,
        model: str,
        path: Path,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
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
    ) -> ImportReport:
        """Approve (line number, text) rows; bad rows are reported, the others loaded by COPY.

        The rows are parsed in a worker thread a batch ahead of the database, so
        parsing (Python) and inserting (PostgreSQL) use both cores at once.
        Memory is two batches of identifiers whatever the rows: ranges are
        expanded lazily and duplicates are found by the database.
        """
        row = await self.model(vendor, model)
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
            row, actor=self._actor, detail=f"from {source}" if source else None, dry_run=dry_run
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
        self, vendor: str, model: str, numbers: Iterable[str], *, force: bool = False
    ) -> UnapproveReport:
        """Take identifiers off the approval list; devices in use need ``force``."""
        row = await self.model(vendor, model)
        canonical = [identifiers.normalize(row.kind, n, row.pattern) for n in numbers]
        if not canonical:
            raise Malformed("No identifier was given to unapprove.")
        outcome = await self._store.unapprove(row, canonical, force=force, actor=self._actor)
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
        return UnapproveReport(outcome.removed, outcome.missing)

    async def release(self, vendor: str, model: str, number: str, *, owner: str) -> LifecycleResult:
        """The owner gives the device up: its key stops being valid, another owner may claim it."""
        row, canonical = await self._device(vendor, model, number)
        login = await self._store.login_of(row, canonical)
        outcome = await self._store.release(row, canonical, owner=owner, actor=self._actor)
        if outcome.status == "not_owner":
            raise NotOwner(
                f"The {self._named(row, canonical)} is not claimed by {owner}; only the "
                "account that claimed it can release it (or ask the vendor to transfer it)."
            )
        result = self._result(row, canonical, outcome, nothing="release")
        await self._close_broker_login(login)
        return result

    async def transfer(self, vendor: str, model: str, number: str, *, to: str) -> LifecycleResult:
        """An administrator moves a claimed device to another owner (audited)."""
        if not 1 <= len(to) <= 128:
            raise Malformed("The owner name must be 1 to 128 characters.")
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.transfer(row, canonical, to=to, actor=self._actor)
        if outcome.status == "already_theirs":
            raise Conflict(f"The {self._named(row, canonical)} already belongs to {to}.")
        return self._result(row, canonical, outcome, nothing="transfer")

    async def reenable(
        self, vendor: str, model: str, number: str, *, window_seconds: int | None = None
    ) -> LifecycleResult:
        """Open a new activation window; the next activation issues a new key."""
        if window_seconds is not None and window_seconds <= 0:
            raise Malformed("The activation window must be at least one second.")
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.reenable(
            row,
            canonical,
            window_seconds=window_seconds or row.window_seconds,
            actor=self._actor,
        )
        return self._result(row, canonical, outcome, nothing="re-enable")

    async def revoke(self, vendor: str, model: str, number: str) -> LifecycleResult:
        """The key stops being valid now; activation answers revoked until re-enabled."""
        row, canonical = await self._device(vendor, model, number)
        login = await self._store.login_of(row, canonical)
        outcome = await self._store.revoke(row, canonical, actor=self._actor)
        if outcome.status == "already_revoked":
            raise Conflict(
                f"The {self._named(row, canonical)} is already revoked; "
                "re-enable it to let it activate again."
            )
        result = self._result(row, canonical, outcome, nothing="revoke")
        await self._close_broker_login(login)
        return result

    async def _close_broker_login(self, client_id: str | None) -> None:
        """After a committed revoke or release, the key must stop opening the broker too."""
        if self._settings is None or client_id is None:
            return
        # Imported here: only brokers with device logins need the MQTT client at all.
        from bridge.dynsec import disable_device_login  # noqa: PLC0415

        try:
            await disable_device_login(self._settings, client_id)
        except BrokerAdminError as exc:
            # The database change stands; say loudly that the broker login lingers.
            log.warning(
                "the key no longer activates, but the broker login %r could not be "
                "disabled: %s; disable it on the broker by hand",
                client_id,
                exc.message,
                extra={"event": "broker_login_lingers", "client_id": client_id},
            )

    async def list_devices(
        self,
        vendor: str,
        model: str,
        *,
        state: str | None = None,
        owner: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[DeviceRow]:
        """One page of a model's devices in identifier order; pass the last one as ``after``."""
        row = await self.model(vendor, model)
        if state is not None and state not in STATES:
            raise Malformed(f"The state {state!r} is not one of {', '.join(STATES)}.")
        if not 1 <= limit <= 10_000:
            raise Malformed("The page size must be 1 to 10000.")
        start = identifiers.normalize(row.kind, after, row.pattern) if after else None
        return await self._store.list_devices(
            row, state=state, owner=owner, after=start, limit=limit
        )

    async def audit(
        self,
        *,
        vendor: str | None = None,
        model: str | None = None,
        identifier: str | None = None,
        owner: str | None = None,
        client_id: str | None = None,
        code: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """History of activation attempts and administrative actions, newest first."""
        if not 1 <= limit <= 100_000:
            raise Malformed("The number of entries must be 1 to 100000.")
        candidates: tuple[str, ...] | None = None
        if identifier is not None:
            if vendor is not None and model is not None:
                row = await self.model(vendor, model)
                candidates = (identifiers.normalize(row.kind, identifier, row.pattern),)
            else:
                candidates = _any_kind(identifier)
        return await self._store.audit(
            AuditQuery(
                vendor=vendor,
                model=model,
                identifiers=candidates,
                owner=owner,
                client_id=client_id,
                code=code,
                since=since,
                limit=limit,
            )
        )

    async def _device(self, vendor: str, model: str, number: str) -> tuple[ModelRow, str]:
        row = await self.model(vendor, model)
        return row, identifiers.normalize(row.kind, number, row.pattern)

    @staticmethod
    def _named(row: ModelRow, canonical: str) -> str:
        return (
            f"{identifiers.kind_name(row.kind)} {identifiers.display(row.kind, canonical)} "
            f"({row.vendor}/{row.model})"
        )

    def _result(
        self, row: ModelRow, canonical: str, outcome: LifecycleOutcome, *, nothing: str
    ) -> LifecycleResult:
        if outcome.status == "not_approved":
            raise NotApproved(
                f"The {self._named(row, canonical)} is not on the approval list; "
                "check the number on the device's label."
            )
        if outcome.status == "not_claimed":
            raise NotClaimed(
                f"The {self._named(row, canonical)} is not claimed by anyone, so there is "
                f"nothing to {nothing}; claim it first."
            )
        assert outcome.status == "ok", outcome.status
        return LifecycleResult(canonical, outcome.owner, outcome.state, outcome.window_ends_at)

    async def show(self, vendor: str, model: str, number: str) -> DeviceRow:
        row = await self.model(vendor, model)
        canonical = identifiers.normalize(row.kind, number, row.pattern)
        device = await self._store.show(row, canonical)
        if device is None:
            raise NotApproved(
                f"The {identifiers.kind_name(row.kind)} {identifiers.display(row.kind, canonical)} "
                f"is not on the approval list of {row.vendor}/{row.model}."
            )
        return device

    async def verify_key(self, vendor: str, model: str, number: str, key: str) -> bool:
        """Whether ``key`` is the current key of an activated device (constant time).

        False for a wrong key, a revoked or never-activated device, a number that is
        not approved, and a key hashed under a secret no longer configured.
        """
        if self._hasher is None:
            raise ConfigError("verifying a key needs the server secret: set BRIDGE_SECRET")
        row = await self.model(vendor, model)
        canonical = identifiers.normalize(row.kind, number, row.pattern)
        stored = await self._store.stored_key(row, canonical)
        if stored is None or stored.state != "activated":
            return False
        return self._hasher.verify(key, stored.key_hash, stored.key_id)

    async def _suggest(self, model: ModelRow, typed: str) -> str | None:
        """An approved identifier differing from ``typed`` only by look-alike characters."""
        key = identifiers.lookalike_key(model.kind, typed)
        for candidate in await self._store.lookalikes(model, key):
            if identifiers.suggestion_ok(typed, candidate):
                return identifiers.display(model.kind, candidate)
        return None


def _hasher(settings: Settings) -> keys.KeyHasher | None:
    try:
        secret = settings.server_secret()
    except ConfigError:
        return None  # the vendor/owner operations work without the secret
    return keys.KeyHasher(secret, settings.previous_server_secrets())


def _any_kind(text: str) -> tuple[str, ...]:
    """Every canonical form ``text`` has under some kind, and the text itself."""
    found = dict.fromkeys([text.strip()])
    for kind in identifiers.Kind:
        with contextlib.suppress(InvalidIdentifier):
            found[identifiers.normalize(kind, text)] = None
    return tuple(found)


def _check_pattern(pattern: str) -> None:
    # RE2 syntax and bounded size, so that matching device input is linear time.
    identifiers.check_pattern(pattern)
