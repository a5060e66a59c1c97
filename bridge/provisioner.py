"""The activation use case: request bytes in, reply bytes out.

Imports neither aiomqtt nor asyncpg: it is handed a store (anything with the
methods of :class:`ActivationStore`) and a clock, so it can be reasoned about
without a broker. The decision itself happens in the database, in one round trip
(``bridge_activate``, schemas/functions/transitions/activate.sql); this module
prepares the candidate key and reply before that round trip and words the outcome
after it. One check comes first, in memory:
a client id that names an operator's broker login is refused (``client_id_reserved``)
before the database is asked anything (:mod:`bridge.logins`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bridge import identifiers, keys, protocol
from bridge.codes import Code
from bridge.errors import (
    BridgeError,
    ClientIdReserved,
    InvalidIdentifier,
    Malformed,
    NotApproved,
    RequestError,
    SealRequired,
    Unavailable,
    UnknownModel,
)
from bridge.records import (
    Activation,
    ActivationOutcome,
    AuditEntry,
    LoginOpened,
    ModelRow,
    RateLimit,
    Refusal,
    StoredKey,
)

log = logging.getLogger("bridge.provisioner")


class ActivationStore(Protocol):
    """What activation needs from storage (implemented by :class:`bridge.store.Store`)."""

    async def get_model(self, vendor: str, model: str) -> ModelRow | None: ...

    async def activate(self, activation: Activation) -> ActivationOutcome: ...

    async def refuse(self, entry: AuditEntry, limit: RateLimit) -> Refusal: ...

    async def record(self, entry: AuditEntry) -> None: ...

    async def login_opened(self, login: LoginOpened) -> StoredKey | None: ...


class DeviceAccounts(Protocol):
    """Broker logins for activated devices (implemented by :class:`bridge.dynsec.DynSec`)."""

    async def upsert_device(self, client_id: str, key: str) -> None: ...

    async def disable_device(self, client_id: str) -> None: ...


class LoginRules(Protocol):
    """Which client ids name someone else's broker login (:class:`bridge.logins.LoginNamespace`)."""

    def refusal(self, client_id: str) -> str | None: ...


@dataclass(frozen=True)
class Reply:
    """What to publish on the device's reply topic, and what to log about it."""

    payload: bytes
    code: Code
    request_id: str | None
    identifier: str | None = None

    def __repr__(self) -> str:  # the payload may hold a key: never shown
        return f"Reply(code={self.code!r}, request_id={self.request_id!r})"


class Provisioner:
    """Turns one activation request into one reply."""

    def __init__(
        self,
        store: ActivationStore,
        hasher: keys.KeyHasher,
        cipher: keys.ReplayCipher,
        *,
        grace_seconds: int = 600,
        retry_after: int = 5,
        limit: RateLimit | None = None,
        accounts: DeviceAccounts | None = None,
        logins: LoginRules | None = None,
        model_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        enrollment: keys.EnrollmentCipher | None = None,
        on_guessing: Callable[[str, str], None] | None = None,
    ) -> None:
        self._store = store
        self._limit = limit or RateLimit()
        self._accounts = accounts
        self._logins = logins
        self._hasher = hasher
        self._cipher = cipher
        self._grace = grace_seconds
        self._retry_after = retry_after
        self._model_ttl = model_ttl
        self._clock = clock
        # Models change rarely and every request needs one: a short-lived cache saves
        # a round trip per activation without making `model add` wait long to take effect.
        self._models: dict[tuple[str, str], tuple[float, ModelRow]] = {}
        # Decrypts the enrollment keys of models that require device proof; without it
        # (no server secret given) such models refuse every request, never accept one.
        self._enrollment = enrollment
        self._enrollment_keys: dict[tuple[int, int], bytes | None] = {}
        # Told (e.g. a metric) of every failure answered 'rate_limited' because of
        # failures from all client ids on one identifier or model: (vendor, model).
        self._on_guessing = on_guessing
        # When each model's guessing was last logged: one line per model and window.
        self._guessing_logged: dict[tuple[str, str], float] = {}

    async def activate(self, client_id: str, payload: bytes) -> Reply:
        """Validate, decide and word the reply for one request from ``client_id``."""
        try:
            request = protocol.parse_request(payload)
        except Malformed as exc:
            request_id = protocol.request_id_of(payload)
            await self._audit_quietly(
                AuditEntry(
                    "activate",
                    exc.code,
                    actor="device",
                    client_id=client_id,
                    request_id=request_id,
                    detail=exc.message,
                )
            )
            return Reply(
                protocol.error_reply(request_id, exc.code, exc.message), exc.code, request_id
            )
        try:
            reserved = await self._refuse_reserved(client_id, request)
            return reserved if reserved is not None else await self._activate(client_id, request)
        except Unavailable as exc:
            body = protocol.error_reply(
                request.request_id, exc.code, exc.message, self._retry_after
            )
            return Reply(body, exc.code, request.request_id)

    async def reject_topic(self, topic: str, payload: bytes) -> None:
        """Record a request whose topic has no valid client id (it gets no reply)."""
        await self._audit_quietly(
            AuditEntry(
                "activate",
                Code.MALFORMED,
                actor="device",
                request_id=protocol.request_id_of(payload),
                detail=f"topic {topic[:200]!r} carries no valid client id; not answered",
            )
        )

    async def _activate(self, client_id: str, request: protocol.ActivationRequest) -> Reply:
        rid = request.request_id
        audit = AuditEntry(
            "activate",
            Code.ERROR,  # a template: _refuse writes the refusal's code
            actor="device",
            client_id=client_id,
            request_id=rid,
            vendor=request.vendor,
            model=request.model,
            identifier_presented=request.identifier,
        )
        try:
            device_public = (
                keys.decode_public_key(request.public_key)
                if request.public_key is not None
                else None
            )
        except ValueError as exc:
            return await self._refuse(
                audit,
                Malformed(
                    "The field 'public_key' must be the standard base64 of a 32-byte X25519 "
                    f"public key ({exc})."
                ),
            )
        model = await self._model(request.vendor, request.model)
        if model is None:
            return await self._refuse(
                audit,
                UnknownModel(
                    f"The model {request.vendor}/{request.model} is not registered; "
                    "check the vendor and model names the firmware sends."
                ),
            )
        try:
            canonical = identifiers.normalize(model.kind, request.identifier, model.pattern)
        except InvalidIdentifier as exc:
            return await self._refuse(audit, exc)
        audit = dataclasses.replace(audit, identifier=canonical)
        if device_public is None and not model.plaintext_keys:
            # Not a guess (it does not depend on the number), so not counted; audited.
            return await self._refuse(
                audit,
                SealRequired(
                    f"The model {model.vendor}/{model.model} delivers keys only sealed: the "
                    "request must carry 'public_key', the standard base64 of the device's "
                    "X25519 public key."
                ),
            )
        if model.proof_required and not self._proof_is_valid(model, canonical, client_id, request):
            # Word for word the answer for a number that is not approved, and counted
            # like one: a guesser cannot tell a right number with no proof from a wrong one.
            return await self._refuse(
                audit,
                NotApproved(_not_approved(model, canonical)),
                detail="device proof missing" if request.proof is None else "device proof invalid",
            )

        key = keys.generate_key()
        if device_public is not None:
            body = protocol.ok_reply(
                rid,
                model.vendor,
                model.model,
                canonical,
                sealed_key=keys.seal(key, device_public, rid),
            )
        else:
            body = protocol.ok_reply(rid, model.vendor, model.model, canonical, key=key)
        aad = _replay_aad(client_id, rid)
        # Kept with the stored reply until the device's broker login is open (see
        # _open_broker_account): a sealed reply is the device's alone to read.
        login_key = (
            self._cipher.encrypt(key.encode(), _login_aad(client_id, rid))
            if self._accounts is not None
            else None
        )
        outcome = await self._store.activate(
            Activation(
                client_id=client_id,
                client_limit=self._limit.failures,
                # A client id is a broker login only where devices get logins.
                device_logins=self._accounts is not None,
                grace_seconds=self._grace,
                identifier=canonical,
                identifier_limit=self._limit.identifier_failures,
                key_hash=self._hasher.hash(key),
                key_id=self._hasher.key_id,
                login_key=login_key,
                model_id=model.id,
                model_limit=self._limit.model_failures,
                presented=request.identifier,
                reply=self._cipher.encrypt(body, aad),
                request_id=rid,
                window_seconds=self._limit.window_seconds,
            )
        )
        if outcome.code == Code.RATE_LIMITED:
            self._guessing(model.vendor, model.model, outcome.limited_by)
            return _rate_limited(rid, outcome.retry_after or 1, canonical)
        if outcome.code == Code.OK:
            opened = LoginOpened(client_id, rid, model.id, canonical)
            await self._open_login_of(outcome, opened, key)
            if outcome.replay is not None:
                replayed = self._cipher.decrypt(outcome.replay, aad)
                if replayed is None:
                    # Stored under a secret this bridge no longer has: it cannot
                    # resend the key, and must not invent a second one.
                    message = (
                        "A key was already issued for this request and cannot be resent; "
                        "re-enable the device to activate it again."
                    )
                    return Reply(
                        protocol.error_reply(rid, Code.ALREADY_ACTIVATED, message),
                        Code.ALREADY_ACTIVATED,
                        rid,
                        canonical,
                    )
                body = replayed
            return Reply(body, Code.OK, rid, canonical)
        message = _refusal(outcome, model, canonical)
        return Reply(protocol.error_reply(rid, outcome.code, message), outcome.code, rid, canonical)

    async def _refuse_reserved(
        self, client_id: str, request: protocol.ActivationRequest
    ) -> Reply | None:
        # Before the database, in memory: a client id that names an operator's broker
        # login gets no key, so that login is never created, changed or disabled for it.
        refusal = self._logins.refusal(client_id) if self._logins is not None else None
        if refusal is None:
            return None
        audit = AuditEntry(
            "activate",
            Code.ERROR,  # a template: _refuse writes the refusal's code
            actor="device",
            client_id=client_id,
            request_id=request.request_id,
            vendor=request.vendor,
            model=request.model,
            identifier_presented=request.identifier,
        )
        return await self._refuse(audit, ClientIdReserved(refusal))

    async def _refuse(
        self, audit: AuditEntry, exc: RequestError, *, detail: str | None = None
    ) -> Reply:
        """Answer a refusal decided before the database, and audit it.

        A guess (an unknown model, an impossible identifier, a missing or wrong device
        proof) also counts against the client id, so a client past the limit is told
        ``rate_limited`` instead. ``detail`` is what the audit log says when it should
        say more than the requester is told.
        """
        entry = dataclasses.replace(audit, code=exc.code, detail=detail or exc.message)
        if exc.code in _COUNTED_BEFORE_THE_DATABASE:
            try:
                refusal = await self._store.refuse(entry, self._limit)
            except Unavailable:
                log.warning("refusal not counted: database unavailable (code=%s)", exc.code)
                refusal = Refusal()
            if refusal.retry_after is not None:
                if audit.vendor is not None and audit.model is not None:
                    self._guessing(audit.vendor, audit.model, refusal.limited_by)
                return _rate_limited(audit.request_id, refusal.retry_after, None)
        else:
            await self._audit_quietly(entry)
        body = protocol.error_reply(audit.request_id, exc.code, exc.message)
        return Reply(body, exc.code, audit.request_id)

    def _proof_is_valid(
        self, model: ModelRow, canonical: str, client_id: str, request: protocol.ActivationRequest
    ) -> bool:
        if request.proof is None:
            return False
        enrollment_keys = [
            key
            for generation, encrypted in model.enrollment_keys
            if (key := self._enrollment_key(model, generation, encrypted)) is not None
        ]
        return keys.proof_is_valid(
            enrollment_keys, canonical, client_id, request.request_id, request.proof
        )

    def _enrollment_key(self, model: ModelRow, generation: int, encrypted: bytes) -> bytes | None:
        cache_key = (model.id, generation)
        if cache_key in self._enrollment_keys:
            return self._enrollment_keys[cache_key]
        key = (
            self._enrollment.decrypt(encrypted, model.id, generation)
            if self._enrollment is not None
            else None
        )
        if key is None:
            # Every device of the model is refused until this is fixed: said once, loudly.
            log.error(
                "enrollment key cannot be decrypted; devices of this model cannot prove "
                "their secret (is BRIDGE_SECRET, or BRIDGE_PREVIOUS_SECRETS, the one the key "
                "was created under?)",
                extra={
                    "event": "enrollment_key_unreadable",
                    "vendor": model.vendor,
                    "model": model.model,
                    "generation": generation,
                },
            )
        if len(self._enrollment_keys) > 10_000:  # bounded, like the model cache
            self._enrollment_keys.clear()
        self._enrollment_keys[cache_key] = key
        return key

    async def _open_login_of(
        self, outcome: ActivationOutcome, opened: LoginOpened, key: str
    ) -> None:
        """Open the broker login of a success: a new key's, or a replayed one's still pending."""
        if outcome.replay is None:
            await self._open_broker_account(opened, key, outcome.replaced_client_id)
            return
        if outcome.login_key is None:  # opened when the key was issued
            return
        # The bridge that issued this key stopped before its login was open (or the
        # broker refused it then): open it now, before the device is told its key.
        kept = self._cipher.decrypt(
            outcome.login_key, _login_aad(opened.client_id, opened.request_id)
        )
        if kept is None:  # kept under a secret this bridge no longer has
            log.error(
                "broker login of an issued key cannot be opened: its key was kept under "
                "another server secret; re-enable the device",
                extra={"event": "dynsec_pending_unreadable", "client_id": opened.client_id},
            )
            return
        await self._open_broker_account(opened, kept.decode(), outcome.replaced_client_id)

    async def _open_broker_account(
        self, opened: LoginOpened, key: str, replaced_client_id: str | None
    ) -> None:
        # The key is committed: the device must get its reply even when the broker
        # cannot be told about it now. It is logged, and the identical retry (the key
        # is kept until the login is open) or a re-enable repairs it.
        if self._accounts is None:
            return
        client_id = opened.client_id
        try:
            await self._accounts.upsert_device(client_id, key)
            if replaced_client_id is not None:  # the old key's login must not stay open
                await self._accounts.disable_device(replaced_client_id)
        except BridgeError as exc:
            log.error(  # noqa: TRY400 (one line, no traceback: the cause is in `error`)
                "broker login not created for an activated device",
                extra={"event": "dynsec_failed", "client_id": client_id, "error": str(exc)},
            )
            return
        # A revoke, release or transfer closes the login after its own commit; one that
        # committed after this key and before the login existed found nothing to close,
        # and the login just opened would let the revoked key in. Asked after the login
        # is open: a change committed later closes it itself.
        try:
            # Verified under the secret it was hashed with: a rotation since is no revoke.
            held = await self._store.login_opened(opened)
            if held is not None and self._hasher.verify(key, held.key_hash, held.key_id):
                return
            await self._accounts.disable_device(client_id)
        except BridgeError as exc:
            log.error(  # noqa: TRY400 (one line, no traceback: the cause is in `error`)
                "broker login opened; whether a revoke meanwhile closed the key is unknown",
                extra={"event": "dynsec_unconfirmed", "client_id": client_id, "error": str(exc)},
            )
            return
        log.info(
            "broker login closed again: the key was revoked while it was opened",
            extra={"event": "dynsec_closed_again", "client_id": client_id},
        )

    def _guessing(self, vendor: str, model: str, limited_by: str | None) -> None:
        """Tell the operator that a model's numbers are being guessed from many client ids."""
        if limited_by not in ("identifier", "model"):
            return  # one client id past its own limit is no news
        if self._on_guessing is not None:
            self._on_guessing(vendor, model)
        now = self._clock()
        if self._guessing_logged.get((vendor, model), -float("inf")) > now:
            return
        if len(self._guessing_logged) > 10_000:  # names of registered models only; bounded
            self._guessing_logged.clear()
        self._guessing_logged[(vendor, model)] = now + self._limit.window_seconds
        log.warning(
            "guessing suspected: failed activations of %s/%s from many client ids passed "
            "the %s limit; further failures are answered rate_limited for this window",
            vendor,
            model,
            limited_by,
            extra={
                "event": "guessing_suspected",
                "vendor": vendor,
                "model": model,
                "limit": limited_by,
            },
        )

    async def _audit_quietly(self, entry: AuditEntry) -> None:
        # A refusal decided before the database still gets its answer when the
        # database is down; only its audit line is lost, and that is logged.
        try:
            await self._store.record(entry)
        except Unavailable:
            log.warning("audit entry not written: database unavailable (code=%s)", entry.code)

    async def _model(self, vendor: str, model: str) -> ModelRow | None:
        now = self._clock()
        cached = self._models.get((vendor, model))
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self._store.get_model(vendor, model)
        if row is not None:
            if len(self._models) > 10_000:  # bounded: a flood of names cannot grow it
                self._models.clear()
            self._models[(vendor, model)] = (now + self._model_ttl, row)
        return row


#: Refusals decided in Python that are guesses, counted against the client id
#: (not_approved: a missing or wrong device proof).
_COUNTED_BEFORE_THE_DATABASE = frozenset(
    {Code.UNKNOWN_MODEL, Code.INVALID_IDENTIFIER, Code.NOT_APPROVED}
)


def _rate_limited(request_id: str | None, retry_after: int, identifier: str | None) -> Reply:
    # The same sentence whichever limit was passed: a guesser learns nothing from it.
    message = f"Too many failed activation attempts; retry after {retry_after} seconds."
    body = protocol.error_reply(request_id, Code.RATE_LIMITED, message, retry_after)
    return Reply(body, Code.RATE_LIMITED, request_id, identifier)


def _replay_aad(client_id: str, request_id: str) -> bytes:
    # Binds a stored reply to its (client id, request id): a row copied onto
    # another request does not decrypt.
    return f"{client_id}\x00{request_id}".encode()


def _login_aad(client_id: str, request_id: str) -> bytes:
    # As _replay_aad, and apart from it: a stored reply never decrypts as a login key.
    return f"login\x00{client_id}\x00{request_id}".encode()


def _not_approved(model: ModelRow, canonical: str) -> str:
    """The one sentence for a number that is not approved (or not proven: the same words)."""
    what = f"{identifiers.kind_name(model.kind)} {identifiers.display(model.kind, canonical)}"
    return f"The {what} is not on the approval list of {model.vendor}/{model.model}."


def _refusal(outcome: ActivationOutcome, model: ModelRow, canonical: str) -> str:
    """One sentence for a refusal decided in the database (device-facing: no suggestions)."""
    what = f"{identifiers.kind_name(model.kind)} {identifiers.display(model.kind, canonical)}"
    where = f"{model.vendor}/{model.model}"
    if outcome.code == Code.NOT_APPROVED:
        return _not_approved(model, canonical)
    if outcome.code == Code.NOT_CLAIMED:
        return (
            f"The {what} is approved for {where} but no owner has claimed it yet; "
            "the owner must add it to their account first."
        )
    if outcome.code == Code.WINDOW_EXPIRED:
        return (
            f"The activation window of the {what} has closed; "
            "the owner can re-enable the device to open a new one."
        )
    if outcome.code == Code.ALREADY_ACTIVATED:
        return (
            f"A key was already issued for the {what}; "
            "the device must be re-enabled before it can activate again."
        )
    if outcome.code == Code.REVOKED:
        return (
            f"The key of the {what} was revoked; "
            "the device must be re-enabled before it can activate again."
        )
    if outcome.code == Code.CLIENT_ID_RESERVED:
        return (
            "This client id is the broker login of another device; "
            "each device must activate with a client id of its own."
        )
    return f"The activation of the {what} was refused ({outcome.code})."
