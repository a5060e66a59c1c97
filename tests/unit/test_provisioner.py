"""The activation use case driven with an in-memory store: every path to a reply.

The decision itself is the database's (tests/integration/test_activation.py and the
others run it for real); here the store is a fake of :class:`ActivationStore` that
answers what each test scripts, so what is checked is the provisioner's own part:
parsing, the checks before the database, the candidate key and reply, the wording of
each outcome, replay, throttling and the broker login. No services, no I/O.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import TypeAdapter

from bridge import keys, protocol
from bridge.codes import REPLY_CODES, Code
from bridge.errors import BrokerAdminError, Unavailable
from bridge.logins import LoginNamespace
from bridge.provisioner import Provisioner, Reply, _login_aad, _replay_aad
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

SECRET = b"unit-test-secret-" + bytes(range(32))
SEALED = ModelRow(1, "acme", "thermo-1", "mac", None, 86_400, claim_required=True)
PLAIN = ModelRow(2, "acme", "plain-1", "mac", None, 86_400, False, plaintext_keys=True)
SERIAL = ModelRow(3, "acme", "serial-1", "serial", "SN[0-9]{4}", 86_400, False)
MAC = "00:1A:2B:3C:4D:5E"
CANONICAL = "001A2B3C4D5E"
REPLY = TypeAdapter(protocol.ActivationReply)


class FakeStore:
    """An in-memory :class:`bridge.provisioner.ActivationStore`.

    ``activate`` answers the scripted ``outcome`` when one is set; otherwise it behaves
    as the database does for an approved device: the first request gets ``ok`` and its
    (encrypted) reply is kept, the identical retry gets that reply back.
    """

    def __init__(self, *models: ModelRow) -> None:
        self.models = {(m.vendor, m.model): m for m in models}
        self.model_reads = 0
        self.outcome: ActivationOutcome | None = None
        self.refusal = Refusal()
        self.down = False
        self.holds = True  # False: a revoke committed while the login was being opened
        self.held: StoredKey | None = None  # the device's key, when not the last one issued
        self.opened: list[LoginOpened] = []
        self.stored: dict[tuple[str, str], bytes] = {}
        self.activations: list[dict[str, Any]] = []
        self.refused: list[AuditEntry] = []
        self.recorded: list[AuditEntry] = []

    async def get_model(self, vendor: str, model: str) -> ModelRow | None:
        self.model_reads += 1
        if self.down:
            raise Unavailable("The database cannot be reached now; retry after 5 seconds.")
        return self.models.get((vendor, model))

    async def activate(self, activation: Activation) -> ActivationOutcome:
        if self.down:
            raise Unavailable("The database cannot be reached now; retry after 5 seconds.")
        call = dataclasses.asdict(activation)
        self.activations.append(call)
        if self.outcome is not None:
            return self.outcome
        ids = (call["client_id"], call["request_id"])
        if ids in self.stored:
            return ActivationOutcome(Code.OK, self.stored[ids], None)
        self.stored[ids] = call["reply"]
        return ActivationOutcome(Code.OK, None, None)

    async def refuse(self, entry: AuditEntry, limit: RateLimit) -> Refusal:
        if self.down:
            raise Unavailable("The database cannot be reached now; retry after 5 seconds.")
        self.refused.append(entry)
        return self.refusal

    async def record(self, entry: AuditEntry) -> None:
        if self.down:
            raise Unavailable("The database cannot be reached now; retry after 5 seconds.")
        self.recorded.append(entry)

    async def login_opened(self, login: LoginOpened) -> StoredKey | None:
        if self.down:
            raise Unavailable("The database cannot be reached now; retry after 5 seconds.")
        self.opened.append(login)
        if not self.holds:
            return None
        if self.held is not None:
            return self.held
        last = self.activations[-1]
        return StoredKey("activated", last["key_id"], last["key_hash"])


class FakeAccounts:
    def __init__(self, *, broken: bool = False) -> None:
        self.broken = broken
        self.upserted: list[tuple[str, str]] = []
        self.disabled: list[str] = []

    async def upsert_device(self, client_id: str, key: str) -> None:
        if self.broken:
            raise BrokerAdminError("The broker's dynamic-security plugin did not answer.")
        self.upserted.append((client_id, key))

    async def disable_device(self, client_id: str) -> None:
        self.disabled.append(client_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _provisioner(store: FakeStore, **options: Any) -> Provisioner:
    return Provisioner(store, keys.KeyHasher(SECRET), keys.ReplayCipher(SECRET), **options)


def _public_key(private: X25519PrivateKey) -> str:
    return base64.b64encode(private.public_key().public_bytes_raw()).decode()


def _request(**fields: Any) -> bytes:
    body: dict[str, Any] = {"v": 1, "request_id": "r-1", "vendor": "acme"}
    body |= {"model": "thermo-1", "identifier": MAC}
    body |= fields
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def _body(reply: Reply) -> dict[str, Any]:
    """The reply as a device reads it, after checking it against the protocol's models."""
    REPLY.validate_json(reply.payload)
    body: dict[str, Any] = json.loads(reply.payload)
    assert body.get("code", body["status"]) == reply.code
    return body


# -- success, sealed and plaintext -------------------------------------------------------


async def test_a_sealed_success_carries_the_key_the_store_hashed() -> None:
    store = FakeStore(SEALED)
    device = X25519PrivateKey.generate()
    reply = await _provisioner(store).activate(
        "dev-1", _request(public_key=_public_key(device), identifier="00-1a-2b-3c-4d-5e")
    )
    body = _body(reply)
    assert (reply.code, reply.request_id, reply.identifier) == (Code.OK, "r-1", CANONICAL)
    assert body["identifier"] == CANONICAL and "key" not in body
    key = keys.unseal(device, body["sealed_key"], "r-1")
    (call,) = store.activations
    assert call["identifier"] == CANONICAL
    assert call["presented"] == "00-1a-2b-3c-4d-5e"
    assert call["model_id"] == SEALED.id
    assert keys.KeyHasher(SECRET).verify(key, call["key_hash"], call["key_id"])
    assert call["device_logins"] is False
    # What the store keeps for replay is the reply, encrypted and bound to the request.
    assert key.encode() not in call["reply"]
    assert keys.ReplayCipher(SECRET).decrypt(call["reply"], b"dev-1\x00r-1") == reply.payload
    assert keys.ReplayCipher(SECRET).decrypt(call["reply"], b"dev-2\x00r-1") is None
    assert key not in repr(reply)


async def test_a_plaintext_model_answers_the_key_itself() -> None:
    store = FakeStore(PLAIN)
    reply = await _provisioner(store).activate("dev-1", _request(model="plain-1"))
    body = _body(reply)
    assert reply.code == Code.OK
    assert keys.KeyHasher(SECRET).verify(body["key"], store.activations[0]["key_hash"])
    assert len(body["key"]) == 40


async def test_each_new_request_gets_a_fresh_key() -> None:
    store = FakeStore(PLAIN)
    provisioner = _provisioner(store)
    first = _body(await provisioner.activate("dev-1", _request(model="plain-1")))
    second = _body(await provisioner.activate("dev-1", _request(model="plain-1", request_id="r-2")))
    assert first["key"] != second["key"]


# -- retry and replay --------------------------------------------------------------------


async def test_the_identical_retry_gets_the_stored_reply_byte_for_byte() -> None:
    store = FakeStore(SEALED)
    provisioner = _provisioner(store)
    request = _request(public_key=_public_key(X25519PrivateKey.generate()))
    first = await provisioner.activate("dev-1", request)
    again = await provisioner.activate("dev-1", request)
    assert again.payload == first.payload and again.code == Code.OK
    assert len(store.activations) == 2  # the store decided the replay, not a cache


async def test_a_replay_stored_under_a_lost_secret_is_already_activated() -> None:
    store = FakeStore(PLAIN)
    store.outcome = ActivationOutcome(Code.OK, b"\x00" * 12 + b"sealed under another secret", None)
    reply = await _provisioner(store).activate("dev-1", _request(model="plain-1"))
    body = _body(reply)
    assert reply.code == Code.ALREADY_ACTIVATED
    assert body["message"] == (
        "A key was already issued for this request and cannot be resent; "
        "re-enable the device to activate it again."
    )


async def test_a_replay_opens_no_broker_login_again() -> None:
    store, accounts = FakeStore(PLAIN), FakeAccounts()
    provisioner = _provisioner(store, accounts=accounts)
    request = _request(model="plain-1")
    key = _body(await provisioner.activate("dev-1", request))["key"]
    await provisioner.activate("dev-1", request)
    assert accounts.upserted == [("dev-1", key)]
    assert store.activations[0]["device_logins"] is True


# -- the broker login --------------------------------------------------------------------


async def test_a_new_key_closes_the_login_that_held_the_old_one() -> None:
    store, accounts = FakeStore(PLAIN), FakeAccounts()
    store.outcome = ActivationOutcome(Code.OK, None, None, replaced_client_id="old-dev")
    reply = await _provisioner(store, accounts=accounts).activate(
        "new-dev", _request(model="plain-1")
    )
    assert reply.code == Code.OK
    assert [c for c, _ in accounts.upserted] == ["new-dev"]
    assert accounts.disabled == ["old-dev"]


async def test_a_login_opened_after_a_revoke_committed_is_closed_again() -> None:
    store, accounts = FakeStore(PLAIN), FakeAccounts()
    store.holds = False
    reply = await _provisioner(store, accounts=accounts).activate(
        "dev-1", _request(model="plain-1")
    )
    assert reply.code == Code.OK  # committed before the revoke: the device is told
    assert [c for c, _ in accounts.upserted] == ["dev-1"]
    assert accounts.disabled == ["dev-1"]


async def test_a_replay_opens_the_login_its_bridge_did_not_and_closes_the_replaced_one() -> None:
    """Also after a rotation of the server secret: the key was kept and hashed under the
    previous one, and the login stays open."""
    store, accounts = FakeStore(PLAIN), FakeAccounts()
    cipher = keys.ReplayCipher(SECRET)
    key = "ab" * 20
    old = keys.KeyHasher(SECRET)
    store.held = StoredKey("activated", old.key_id, old.hash(key))
    new_secret = b"unit-test-rotated-secret-" + bytes(range(32))
    body = protocol.ok_reply("r-1", "acme", "plain-1", CANONICAL, key=key)
    store.outcome = ActivationOutcome(
        Code.OK,
        cipher.encrypt(body, _replay_aad("new-dev", "r-1")),
        None,
        replaced_client_id="old-dev",
        login_key=cipher.encrypt(key.encode(), _login_aad("new-dev", "r-1")),
    )
    provisioner = Provisioner(
        store,
        keys.KeyHasher(new_secret, [SECRET]),
        keys.ReplayCipher(new_secret, [SECRET]),
        accounts=accounts,
    )
    reply = await provisioner.activate("new-dev", _request(model="plain-1"))
    assert reply.payload == body
    assert accounts.upserted == [("new-dev", key)]
    assert accounts.disabled == ["old-dev"]  # the replaced login only
    assert [(o.client_id, o.request_id) for o in store.opened] == [("new-dev", "r-1")]


async def test_a_broker_that_refuses_the_login_still_lets_the_key_be_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore(PLAIN)
    provisioner = _provisioner(store, accounts=FakeAccounts(broken=True))
    reply = await provisioner.activate("dev-1", _request(model="plain-1"))
    key = _body(reply)["key"]
    assert reply.code == Code.OK
    assert "broker login not created" in caplog.text
    assert key not in caplog.text


# -- malformed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "request_id", "words"),
    [
        (b"not json", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid UTF-8"),
        (b"[1, 2]", None, "JSON object, not a JSON array"),
        (b"x" * 4097, None, "the limit is 4096 bytes"),
        (b'{"request_id": "r-9", "vendor": "acme"}', "r-9", "missing the field 'model'"),
        (_request(extra=1), "r-1", "unknown field 'extra'"),
        (_request(v=2), "r-1", "'v' must be 1"),
        (_request(identifier="a\x00b"), "r-1", "'identifier' must be a string"),
        (_request(request_id="r/1"), None, "'request_id' must be 1 to 64"),
        (_request(proof="ABC"), "r-1", "'proof' must be 64 lowercase hex"),
    ],
)
async def test_malformed_requests_are_answered_audited_and_not_counted(
    payload: bytes, request_id: str | None, words: str
) -> None:
    store = FakeStore(SEALED)
    reply = await _provisioner(store).activate("dev-1", payload)
    body = _body(reply)
    assert (reply.code, body["request_id"]) == (Code.MALFORMED, request_id)
    assert words in body["message"]
    (entry,) = store.recorded
    assert (entry.code, entry.client_id, entry.request_id) == (Code.MALFORMED, "dev-1", request_id)
    assert store.refused == [] and store.activations == [] and store.model_reads == 0


@pytest.mark.parametrize(
    "public_key",
    [
        base64.b64encode(bytes(32)).decode(),  # a low-order point: all-zero shared secret
        base64.b64encode(bytes(31)).decode(),  # too short
        "not base64 at all!",
    ],
)
async def test_attack_an_unusable_public_key_is_malformed_before_the_database(
    public_key: str,
) -> None:
    store = FakeStore(SEALED)
    reply = await _provisioner(store).activate("dev-1", _request(public_key=public_key))
    body = _body(reply)
    assert reply.code == Code.MALFORMED
    assert "'public_key' must be" in body["message"]
    assert store.activations == [] and store.refused == []
    assert [e.code for e in store.recorded] == [Code.MALFORMED]


async def test_a_topic_without_a_client_id_is_only_recorded() -> None:
    store = FakeStore(SEALED)
    await _provisioner(store).reject_topic("provision/activate/a+b", _request())
    (entry,) = store.recorded
    assert (entry.code, entry.client_id, entry.request_id) == (Code.MALFORMED, None, "r-1")
    assert "no valid client id" in (entry.detail or "")


# -- refusals decided before the database ------------------------------------------------


async def test_an_unknown_model_is_refused_and_counted() -> None:
    store = FakeStore(SEALED)
    reply = await _provisioner(store).activate("dev-1", _request(model="nope"))
    body = _body(reply)
    assert reply.code == Code.UNKNOWN_MODEL
    assert body["message"].startswith("The model acme/nope is not registered")
    assert [e.code for e in store.refused] == [Code.UNKNOWN_MODEL]
    assert store.activations == []


async def test_an_impossible_identifier_is_refused_and_counted() -> None:
    store = FakeStore(SERIAL)
    reply = await _provisioner(store).activate(
        "dev-1", _request(model="serial-1", identifier="SN12", public_key=None)
    )
    body = _body(reply)
    assert reply.code == Code.INVALID_IDENTIFIER
    assert "'SN12' is not valid" in body["message"]
    (entry,) = store.refused
    assert (entry.code, entry.identifier_presented, entry.identifier) == (
        Code.INVALID_IDENTIFIER,
        "SN12",
        None,
    )


async def test_a_request_without_public_key_for_a_sealed_model_is_seal_required() -> None:
    store = FakeStore(SEALED)
    reply = await _provisioner(store).activate("dev-1", _request())
    body = _body(reply)
    assert reply.code == Code.SEAL_REQUIRED
    assert "delivers keys only sealed" in body["message"]
    # Not a guess: audited, not counted; the database decides nothing.
    assert [e.code for e in store.recorded] == [Code.SEAL_REQUIRED]
    assert store.recorded[0].identifier == CANONICAL
    assert store.refused == [] and store.activations == []


async def test_a_reserved_client_id_is_refused_before_the_database() -> None:
    store = FakeStore(PLAIN)
    logins = LoginNamespace(["ops"], bridge_client_id="bridge-host-1")
    provisioner = _provisioner(store, logins=logins)
    for client_id in ("admin", "OPS", "bridge-host-1", "bridge-host-1-worker"):
        reply = await provisioner.activate(client_id, _request(model="plain-1"))
        assert reply.code == Code.CLIENT_ID_RESERVED
        assert "is reserved for" in _body(reply)["message"]
    assert store.model_reads == 0 and store.activations == [] and store.refused == []
    assert [e.code for e in store.recorded] == [Code.CLIENT_ID_RESERVED] * 4
    assert (await provisioner.activate("dev-1", _request(model="plain-1"))).code == Code.OK


# -- device proof ------------------------------------------------------------------------


def _proof_model(enrollment_key: bytes, cipher: keys.EnrollmentCipher) -> ModelRow:
    return dataclasses.replace(
        PLAIN,
        id=7,
        model="proof-1",
        proof_required=True,
        enrollment_keys=((2, cipher.encrypt(enrollment_key, 7, 2)),),
    )


def _proof(enrollment_key: bytes, client_id: str, request_id: str = "r-1") -> str:
    return keys.device_proof(keys.device_secret(enrollment_key, CANONICAL), client_id, request_id)


async def test_a_valid_proof_activates() -> None:
    cipher, enrollment_key = keys.EnrollmentCipher(SECRET), keys.generate_enrollment_key()
    store = FakeStore(_proof_model(enrollment_key, cipher))
    reply = await _provisioner(store, enrollment=cipher).activate(
        "dev-1", _request(model="proof-1", proof=_proof(enrollment_key, "dev-1"))
    )
    assert reply.code == Code.OK


@pytest.mark.parametrize("case", ["missing", "other client id", "other key", "no cipher"])
async def test_attack_without_a_valid_proof_the_answer_is_word_for_word_not_approved(
    case: str,
) -> None:
    cipher, enrollment_key = keys.EnrollmentCipher(SECRET), keys.generate_enrollment_key()
    model = _proof_model(enrollment_key, cipher)
    proof = {
        "missing": None,
        "other client id": _proof(enrollment_key, "dev-2"),
        "other key": _proof(keys.generate_enrollment_key(), "dev-1"),
        "no cipher": _proof(enrollment_key, "dev-1"),
    }[case]
    store = FakeStore(model)
    provisioner = _provisioner(store, enrollment=None if case == "no cipher" else cipher)
    reply = await provisioner.activate("dev-1", _request(model="proof-1", proof=proof))
    body = _body(reply)
    assert reply.code == Code.NOT_APPROVED
    # Word for word the database's not_approved for the same number and model.
    database = FakeStore(dataclasses.replace(model, proof_required=False))
    database.outcome = ActivationOutcome(Code.NOT_APPROVED, None, None)
    unapproved = await _provisioner(database).activate("dev-1", _request(model="proof-1"))
    assert (
        _body(unapproved)["message"]
        == body["message"]
        == ("The MAC address 00:1A:2B:3C:4D:5E is not on the approval list of acme/proof-1.")
    )
    (entry,) = store.refused  # counted like a wrong number
    assert entry.detail == ("device proof missing" if proof is None else "device proof invalid")
    assert store.activations == []


# -- outcomes decided in the database ------------------------------------------------------

DATABASE_SENTENCES = {
    Code.NOT_APPROVED: "The MAC address 00:1A:2B:3C:4D:5E is not on the approval list of "
    "acme/thermo-1.",
    Code.NOT_CLAIMED: "The MAC address 00:1A:2B:3C:4D:5E is approved for acme/thermo-1 but no "
    "owner has claimed it yet; the owner must add it to their account first.",
    Code.WINDOW_EXPIRED: "The activation window of the MAC address 00:1A:2B:3C:4D:5E has closed; "
    "the owner can re-enable the device to open a new one.",
    Code.ALREADY_ACTIVATED: "A key was already issued for the MAC address 00:1A:2B:3C:4D:5E; the "
    "device must be re-enabled before it can activate again.",
    Code.REVOKED: "The key of the MAC address 00:1A:2B:3C:4D:5E was revoked; the device must be "
    "re-enabled before it can activate again.",
    Code.CLIENT_ID_RESERVED: "This client id is the broker login of another device; each device "
    "must activate with a client id of its own.",
}


@pytest.mark.parametrize("code", list(DATABASE_SENTENCES))
async def test_each_refusal_of_the_database_is_worded_for_the_device(code: Code) -> None:
    store = FakeStore(SEALED)
    store.outcome = ActivationOutcome(code, None, None)
    accounts = FakeAccounts()
    reply = await _provisioner(store, accounts=accounts).activate(
        "dev-1", _request(public_key=_public_key(X25519PrivateKey.generate()))
    )
    body = _body(reply)
    assert (reply.code, reply.request_id, reply.identifier) == (code, "r-1", CANONICAL)
    assert body["message"] == DATABASE_SENTENCES[code]
    assert "retry_after" not in body
    assert accounts.upserted == []  # no key, no login
    assert store.refused == [] and store.recorded == []  # the database audited it


async def test_every_reply_code_has_a_path_here() -> None:
    # The codes this module's tests reach: all the protocol's, so none is left unwritten.
    reached = {
        Code.MALFORMED,
        Code.INVALID_IDENTIFIER,
        Code.UNKNOWN_MODEL,
        Code.SEAL_REQUIRED,
        Code.RATE_LIMITED,
        Code.UNAVAILABLE,
        *DATABASE_SENTENCES,
    }
    assert reached == set(REPLY_CODES)


# -- throttling ------------------------------------------------------------------------------


@pytest.mark.parametrize("limited_by", ["client", "identifier", "model"])
async def test_a_throttled_activation_says_only_when_to_retry(limited_by: str) -> None:
    store = FakeStore(SEALED)
    store.outcome = ActivationOutcome(
        Code.RATE_LIMITED, None, None, retry_after=42, limited_by=limited_by
    )
    guessed: list[tuple[str, str]] = []
    provisioner = _provisioner(store, on_guessing=lambda v, m: guessed.append((v, m)))
    reply = await provisioner.activate(
        "dev-1", _request(public_key=_public_key(X25519PrivateKey.generate()))
    )
    body = _body(reply)
    assert (reply.code, body["retry_after"]) == (Code.RATE_LIMITED, 42)
    # The same sentence whichever limit was passed: a guesser learns nothing from it.
    assert body["message"] == "Too many failed activation attempts; retry after 42 seconds."
    assert guessed == ([] if limited_by == "client" else [("acme", "thermo-1")])


async def test_a_throttled_refusal_before_the_database_is_rate_limited() -> None:
    store = FakeStore(SEALED)
    store.refusal = Refusal(retry_after=30, limited_by="model")
    guessed: list[tuple[str, str]] = []
    provisioner = _provisioner(store, on_guessing=lambda v, m: guessed.append((v, m)))
    reply = await provisioner.activate("dev-1", _request(identifier="not a mac"))
    body = _body(reply)
    assert (reply.code, body["retry_after"], body["request_id"]) == (Code.RATE_LIMITED, 30, "r-1")
    assert [e.code for e in store.refused] == [Code.INVALID_IDENTIFIER]  # counted as itself
    assert guessed == [("acme", "thermo-1")]


async def test_guessing_is_logged_once_a_window_per_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, clock = FakeStore(SEALED), Clock()
    store.outcome = ActivationOutcome(
        Code.RATE_LIMITED, None, None, retry_after=5, limited_by="identifier"
    )
    provisioner = _provisioner(store, clock=clock, limit=RateLimit(window_seconds=60))
    request = _request(public_key=_public_key(X25519PrivateKey.generate()))
    for _ in range(3):
        await provisioner.activate("dev-1", request)
    clock.now += 61
    await provisioner.activate("dev-1", request)
    assert caplog.text.count("guessing suspected") == 2


# -- the database unavailable ---------------------------------------------------------------


async def test_a_database_that_is_down_is_unavailable_with_retry_after() -> None:
    store = FakeStore(SEALED)
    store.down = True
    reply = await _provisioner(store, retry_after=7).activate(
        "dev-1", _request(public_key=_public_key(X25519PrivateKey.generate()))
    )
    body = _body(reply)
    assert (reply.code, body["retry_after"], body["request_id"]) == (Code.UNAVAILABLE, 7, "r-1")


async def test_a_refusal_is_answered_even_when_it_cannot_be_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore(SEALED)
    provisioner = _provisioner(store)
    await provisioner.activate("dev-1", _request(identifier="zz"))  # reads the model: cached
    store.down = True
    # Decided in memory: the answer stands, only its audit line (or count) is lost.
    assert (await provisioner.activate("dev-1", b"not json")).code == Code.MALFORMED
    assert (await provisioner.activate("dev-1", _request(identifier="zz"))).code == (
        Code.INVALID_IDENTIFIER
    )
    assert (await provisioner.activate("dev-1", _request())).code == Code.SEAL_REQUIRED
    assert "audit entry not written" in caplog.text
    assert "refusal not counted" in caplog.text
    # What needs the database waits for it.
    assert (await provisioner.activate("dev-1", _request(model="other"))).code == (Code.UNAVAILABLE)


# -- the model cache ---------------------------------------------------------------------------


async def test_models_are_read_once_per_ttl() -> None:
    store, clock = FakeStore(PLAIN), Clock()
    provisioner = _provisioner(store, clock=clock, model_ttl=5.0)
    for n in range(3):
        await provisioner.activate("dev-1", _request(model="plain-1", request_id=f"r-{n}"))
    assert store.model_reads == 1
    clock.now += 5.1
    await provisioner.activate("dev-1", _request(model="plain-1", request_id="r-9"))
    assert store.model_reads == 2


async def test_an_unknown_model_is_not_cached() -> None:
    store = FakeStore()
    provisioner = _provisioner(store)
    await provisioner.activate("dev-1", _request(model="plain-1"))
    store.models[("acme", "plain-1")] = PLAIN  # `bridge model add` meanwhile
    assert (await provisioner.activate("dev-1", _request(model="plain-1"))).code == Code.OK
