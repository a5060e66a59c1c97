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
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from bridge import approval_file, embedded, identifiers, keys, tokens
from bridge.approval_file import Refusal
from bridge.config import Settings
from bridge.diagnosis import Diagnosis
from bridge.errors import (
    BrokerAdminError,
    ClaimedByOther,
    ConfigError,
    Conflict,
    Forbidden,
    InvalidIdentifier,
    Malformed,
    NotApproved,
    NotClaimed,
    NotFound,
    NotOwner,
    UnknownModel,
)
from bridge.records import (
    ApiToken,
    AuditEntry,
    AuditQuery,
    AuditRecord,
    DeviceRow,
    EnrollmentKeyInfo,
    LifecycleOutcome,
    ModelRow,
)
from bridge.store import Store
from bridge.support import SupportDesk
from bridge.text import check_name
from bridge.tokens import IssuedToken, Role

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
    #: The client id whose broker login held the key (closed by revoke, release, transfer).
    login: str | None = None
    #: The broker could not be told: the login still opens it until disabled by hand.
    login_lingers: bool = False


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
        settings: Settings,
        actor: str = "cli",
        role: Role = Role.ADMIN,
        hasher: keys.KeyHasher | None = None,
    ) -> None:
        self._store = store
        # Required, not optional: revoke, release and transfer close the device's broker
        # login here, whichever entry point (CLI, HTTP API, Python) calls them.
        self._settings = settings
        self._actor = actor
        self._role = role  # who asks: an owner cannot undo a vendor's revoke
        self._hasher = hasher  # only verify_key needs the server secret

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, settings: Settings, *, actor: str = "cli", role: Role = Role.ADMIN
    ) -> AsyncIterator[Admin]:
        """Open the configured (or embedded) database; migrates the embedded one."""
        dsn = embedded.database_url(settings)
        async with Store.open(dsn, pool_size=2) as store:
            if embedded.is_embedded_database(settings):
                await store.migrate()
            yield cls(store, settings=settings, actor=actor, role=role, hasher=_hasher(settings))

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
        plaintext_keys: bool = False,
    ) -> ModelRow:
        """Register a model. Keys travel sealed unless ``plaintext_keys`` (the vendor's
        choice, for devices that cannot do X25519)."""
        try:
            kind = identifiers.Kind(kind).value
        except ValueError as exc:
            kinds = ", ".join(k.value for k in identifiers.Kind)
            raise Malformed(f"The kind {kind!r} is not one of {kinds}.") from exc
        for label, value in (("vendor", vendor), ("model", model)):
            check_name(label, value)
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
            plaintext_keys=plaintext_keys,
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
        row = await self.model(vendor, model)
        pairs = []
        for text in numbers:
            canonical = identifiers.normalize(row.kind, text, row.pattern)
            pairs.append((canonical, identifiers.lookalike_key(row.kind, canonical)))
        if not pairs:
            raise Malformed("No identifier was given to approve.")
        added, already = await self._store.approve(
            row, pairs, actor=actor or self._actor, reason=reason
        )
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
        # A removed device's key must not keep opening the broker either.
        await self._close_logins(outcome.logins)
        return UnapproveReport(outcome.removed, outcome.missing)

    # Release, transfer, reenable and revoke: each is decided in one store call (one
    # transaction, audited) and its broker side effect is attached here, after the
    # commit, so the CLI, the HTTP API and Python callers cannot drift apart.

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
        on the broker), another owner may claim it. A vendor-revoked device stays revoked."""
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.release(
            row, canonical, owner=owner, actor=actor or self._actor, reason=reason
        )
        if outcome.status == "not_owner":
            raise NotOwner(
                f"The {self._named(row, canonical)} is not claimed by {owner}; only the "
                "account that claimed it can release it (or ask the vendor to transfer it)."
            )
        return await self._closed(self._result(row, canonical, outcome, nothing="release"))

    async def transfer(
        self,
        vendor: str,
        model: str,
        number: str,
        *,
        to: str,
        actor: str | None = None,
        reason: str | None = None,
    ) -> LifecycleResult:
        """An administrator moves a claimed device to another owner (audited).

        The previous owner's key is revoked, in the database and on the broker; the new
        owner's activation window opens (a revoked device stays revoked).
        """
        if not 1 <= len(to) <= 128:
            raise Malformed("The owner name must be 1 to 128 characters.")
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.transfer(
            row, canonical, to=to, actor=actor or self._actor, reason=reason
        )
        if outcome.status == "already_theirs":
            raise Conflict(f"The {self._named(row, canonical)} already belongs to {to}.")
        return await self._closed(self._result(row, canonical, outcome, nothing="transfer"))

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
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.reenable(
            row,
            canonical,
            window_seconds=window_seconds or row.window_seconds,
            actor=actor or self._actor,
            by=self._role.value,
            reason=reason,
        )
        if outcome.status == "revoked_by_vendor":
            raise Forbidden(
                f"The {self._named(row, canonical)} was revoked by its vendor; only the "
                "vendor or an administrator can re-enable it."
            )
        return self._result(row, canonical, outcome, nothing="re-enable")

    async def revoke(self, vendor: str, model: str, number: str) -> LifecycleResult:
        """The key stops being valid now, in the database and on the broker; activation
        answers revoked until re-enabled."""
        row, canonical = await self._device(vendor, model, number)
        outcome = await self._store.revoke(row, canonical, actor=self._actor, by=self._role.value)
        if outcome.status == "already_revoked":
            raise Conflict(
                f"The {self._named(row, canonical)} is already revoked; "
                "re-enable it to let it activate again."
            )
        return await self._closed(self._result(row, canonical, outcome, nothing="revoke"))

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
        return LifecycleResult(
            canonical, outcome.owner, outcome.state, outcome.window_ends_at, outcome.login
        )

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

    # -- enrollment keys and device secrets (device proof) -------------------------

    async def create_enrollment_key(self, vendor: str, model: str) -> int:
        """Give a model its first enrollment key; from then on it requires device proof.

        Returns the key's generation (1). Devices activating from now on must prove the
        secret :meth:`device_secret` prints for them.
        """
        return await self._add_enrollment_key(vendor, model, rotate=False, retire_previous=False)

    async def rotate_enrollment_key(
        self, vendor: str, model: str, *, retire_previous: bool = False
    ) -> int:
        """Add a new generation; device secrets are printed from it from now on.

        The previous generations stay accepted (devices already made carry secrets
        derived from them) unless ``retire_previous``: then they stop at once.
        """
        return await self._add_enrollment_key(
            vendor, model, rotate=True, retire_previous=retire_previous
        )

    async def _add_enrollment_key(
        self, vendor: str, model: str, *, rotate: bool, retire_previous: bool
    ) -> int:
        cipher = self._enrollment_cipher()  # before anything is written
        row = await self.model(vendor, model)
        fresh = keys.generate_enrollment_key()
        status, generation = await self._store.add_enrollment_key(
            row,
            lambda next_generation: cipher.encrypt(fresh, row.id, next_generation),
            rotate=rotate,
            retire_previous=retire_previous,
            actor=self._actor,
        )
        if status == "has_key":
            raise Conflict(
                f"The model {vendor}/{model} already has an enrollment key (generation "
                f"{generation}); rotate it instead."
            )
        if status == "no_key":
            raise Conflict(
                f"The model {vendor}/{model} has no enrollment key to rotate; create one first."
            )
        return generation

    async def retire_enrollment_key(self, vendor: str, model: str, generation: int) -> None:
        """Stop accepting proofs made with one older generation of the model's key."""
        row = await self.model(vendor, model)
        status = await self._store.retire_enrollment_key(row, generation, actor=self._actor)
        if status == "not_found":
            raise NotFound(
                f"The model {vendor}/{model} has no enrollment key generation {generation}."
            )
        if status == "already_retired":
            raise Conflict(
                f"The enrollment key generation {generation} of {vendor}/{model} "
                "is already retired."
            )
        if status == "newest":
            raise Conflict(
                f"The enrollment key generation {generation} of {vendor}/{model} is the newest; "
                "rotate with --retire-previous to replace it."
            )

    async def enrollment_keys(self, vendor: str, model: str) -> list[EnrollmentKeyInfo]:
        """Every generation of the model's enrollment key, newest first (never a key)."""
        return await self._store.enrollment_key_list(await self.model(vendor, model))

    async def device_secret(self, vendor: str, model: str, number: str) -> tuple[str, str]:
        """(canonical identifier, the device's factory secret as 64 lowercase hex).

        The secret derives from the model's newest enrollment key; it is burned into the
        device's firmware and proves, with each request, more than the sticker shows.
        Audited (never the secret itself).
        """
        cipher = self._enrollment_cipher()
        row, canonical = await self._device(vendor, model, number)
        if not row.enrollment_keys:
            raise Conflict(
                f"The model {vendor}/{model} has no enrollment key; create one first "
                f"(bridge enrollment-key create {vendor} {model})."
            )
        generation, encrypted = row.enrollment_keys[0]
        enrollment_key = cipher.decrypt(encrypted, row.id, generation)
        if enrollment_key is None:
            raise ConfigError(
                f"The enrollment key of {vendor}/{model} was encrypted under another server "
                "secret; set BRIDGE_SECRET (and BRIDGE_PREVIOUS_SECRETS) as for `bridge serve`."
            )
        await self._store.record(
            AuditEntry(
                "device_secret",
                "ok",
                actor=self._actor,
                vendor=row.vendor,
                model=row.model,
                identifier_presented=number,
                identifier=canonical,
                detail=f"printed from enrollment key generation {generation}",
            )
        )
        return canonical, keys.device_secret(enrollment_key, canonical).hex()

    def _enrollment_cipher(self) -> keys.EnrollmentCipher:
        if self._settings is None:
            raise ConfigError(
                "Enrollment keys are encrypted under the server secret, and this operation "
                "was given no settings to read BRIDGE_SECRET from."
            )
        secret = self._settings.server_secret()  # a ConfigError naming what is wrong
        return keys.EnrollmentCipher(secret, self._settings.previous_server_secrets())

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

    async def migrate(self) -> list[str]:
        """Apply the missing migrations; the names of those applied."""
        return await self._store.migrate()

    async def tokens(self) -> list[ApiToken]:
        """Every HTTP API token (never the token itself), oldest first."""
        return await self._store.tokens()

    async def create_token(self, role: str, subject: str | None = None) -> IssuedToken:
        """Issue an HTTP API token for an owner or vendor named ``subject``, or an admin."""
        return await tokens.create_token(self._store, role, subject, actor=self._actor)

    async def revoke_token(self, token_id: str) -> ApiToken:
        """Revoke an HTTP API token by its id."""
        return await tokens.revoke_token(self._store, token_id, actor=self._actor)

    # -- support desk (bridge/support.py) ------------------------------------------

    async def diagnose(
        self, vendor: str, model: str, identifier: str, *, asking: str | None = None
    ) -> Diagnosis:
        """Why the number cannot be added or activated: state, timeline, verdict.

        Any spelling of the number; ``asking`` is the person trying to add it.
        """
        return await SupportDesk(self).diagnose(vendor, model, identifier, asking=asking)

    async def resolve(
        self,
        vendor: str,
        model: str,
        identifier: str,
        action: str,
        *,
        reason: str | None = None,
        to: str | None = None,
    ) -> str:
        """Support acts on a diagnosis (release, transfer, approve, reenable) through the
        transitions above, audited with this Admin's actor; returns one sentence."""
        return await SupportDesk(self).resolve(
            vendor, model, identifier, action, reason=reason, to=to
        )


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
