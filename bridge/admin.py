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
person at a portal. Every operation is one transaction and is audited. The device
lifecycle (approve .. revoke) is decided in :mod:`bridge.transitions`; the methods
here delegate to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Final

from bridge import embedded, identifiers, keys, tokens, transitions
from bridge.config import Settings
from bridge.diagnosis import Diagnosis
from bridge.errors import (
    ConfigError,
    Conflict,
    InvalidIdentifier,
    Malformed,
    NotApproved,
    NotFound,
    RateLimited,
    RequestError,
    Unavailable,
)
from bridge.records import (
    ApiToken,
    AuditEntry,
    AuditQuery,
    AuditRecord,
    DeviceRow,
    EnrollmentKeyInfo,
    ModelRow,
)
from bridge.store import Store
from bridge.support import SupportDesk
from bridge.text import check_name
from bridge.tokens import IssuedToken, Role
from bridge.transitions import (
    ApproveReport,
    ClaimResult,
    ImportReport,
    LifecycleResult,
    Progress,
    UnapproveReport,
)

__all__ = [
    "STATES",
    "Admin",
    "ApproveReport",
    "ClaimResult",
    "ImportReport",
    "LifecycleResult",
    "Progress",
    "UnapproveReport",
]

#: Device states, as ``bridge list --state`` accepts them.
STATES: Final = ("approved", "claimed", "activated", "revoked")


class Admin(transitions.Lifecycle):
    """Administrative operations on one store: the lifecycle transitions (inherited from
    :class:`bridge.transitions.Lifecycle`), models, enrollment keys, tokens, reads and
    the support desk. The Python API; the CLI and the HTTP API are layers over it."""

    def __init__(
        self,
        store: Store,
        *,
        settings: Settings,
        actor: str = "cli",
        role: Role = Role.ADMIN,
        hasher: keys.KeyHasher | None = None,
    ) -> None:
        # Settings are required, not optional: revoke, release and transfer close the
        # device's broker login, whichever entry point (CLI, HTTP API, Python) calls them.
        # Who asks (``role``): an owner cannot undo a vendor's revoke.
        super().__init__(store, settings=settings, actor=actor, role=role)
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
        return await transitions.model_row(self._store, vendor, model)

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

    # -- the lifecycle (approve, approve_file, approve_rows, unapprove, claim, release,
    # transfer, reenable, revoke) is inherited from bridge.transitions.Lifecycle: each
    # transition decided there and its side effects attached, whichever entry point
    # (CLI, HTTP API, Python) calls it.

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

    # -- for the HTTP API: throttled claims, an owner's devices, a device of a known model --

    async def throttled_claim(
        self,
        vendor: str,
        model: str,
        number: str,
        *,
        owner: str,
        token_id: str,
        reason: str | None = None,
    ) -> ClaimResult:
        """:meth:`claim`, with failed claims counted against the API token ``token_id``.

        Past ``api_claim_failures`` failures in ``api_claim_window_seconds`` the claim is
        refused (RateLimited) before it runs, so that "did you mean ...?" cannot be used
        to enumerate approved numbers. Only the caller's failures stay counted.
        """
        wait = await self._store.take_claim_attempt(
            token_id,
            limit=self._settings.api_claim_failures,
            window_seconds=self._settings.api_claim_window_seconds,
        )
        if wait:
            raise RateLimited(
                f"Too many failed attempts to add a device with this token; "
                f"try again in {wait} seconds.",
                retry_after=wait,
            )
        try:
            result = await self.claim(vendor, model, number, owner=owner, reason=reason)
        except RequestError:
            raise  # the caller's failure: it stays counted
        except Exception:
            # Not the caller's fault (the database went away, a bug): not counted. A
            # cancelled claim (client gone, shutdown) is not caught: it answered nothing,
            # and waiting on the database while cancelled would hold up the shutdown.
            with contextlib.suppress(Unavailable):
                await self._store.give_back_claim_attempt(token_id)
            raise
        await self._store.give_back_claim_attempt(token_id)
        return result

    async def owner_devices(self, owner: str, *, limit: int = 500) -> list[tuple[DeviceRow, str]]:
        """(device, model kind) of the devices ``owner`` holds, by vendor, model, identifier."""
        return await self._store.owner_devices(owner, limit=limit)

    async def device_of(self, row: ModelRow, number: str) -> DeviceRow | None:
        """The device ``number`` of a model already looked up; None if it is not approved."""
        return await self._store.show(row, identifiers.normalize(row.kind, number, row.pattern))


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
