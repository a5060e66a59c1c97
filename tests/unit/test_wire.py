"""The published wire artifacts (schemas/wire/) against the bridge's own code.

vectors.json is what firmware and the C library check themselves against; these tests
hold the bridge to every vector, so the file and the bridge cannot drift apart.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import TypeAdapter

from bridge import keys, protocol, wire
from bridge.errors import Malformed

WIRE = Path(__file__).resolve().parents[2] / "schemas" / "wire"


def _load(name: str) -> Any:
    return json.loads((WIRE / name).read_text(encoding="utf-8"))


VECTORS: dict[str, Any] = _load("vectors.json")
REQUEST_SCHEMA = jsonschema.Draft202012Validator(_load("request.schema.json"))
REPLY_SCHEMA = jsonschema.Draft202012Validator(_load("reply.schema.json"))
REPLIES = TypeAdapter(protocol.ActivationReply)


def _ids(section: str) -> list[str]:
    return [v["name"] for v in VECTORS[section]]


def test_checked_in_artifacts_are_what_the_generator_makes() -> None:
    """Drift: a change to the models, builders or derivations must regenerate the files."""
    assert wire.stale() == [], "run: python -m bridge.wire --write"
    assert wire.main(["--check"]) == 0


def test_drift_is_detected(tmp_path: Path) -> None:
    for name, content in wire.artifacts().items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    assert wire.stale(tmp_path) == []
    (tmp_path / "reply.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "vectors.json").unlink()
    assert sorted(wire.stale(tmp_path)) == ["reply.schema.json", "vectors.json"]


def test_schemas_are_valid_json_schemas() -> None:
    for name in ("request.schema.json", "reply.schema.json"):
        jsonschema.Draft202012Validator.check_schema(_load(name))


def test_vectors_have_the_published_shape() -> None:
    assert VECTORS["version"] == 1
    assert set(VECTORS) == {"version", "topics", "requests", "replies", "sealed", "proofs"}
    shapes = {
        "topics": {"prefix", "client_id", "activate", "reply"},
        "requests": {"name", "payload", "valid", "code", "note"},
        "replies": {"name", "payload", "status", "code", "retry_after", "key", "sealed"},
        "sealed": {
            "name",
            "device_private",
            "device_public",
            "ephemeral_private",
            "epk",
            "nonce",
            "request_id",
            "key",
            "ciphertext",
            "reply",
        },
        "proofs": {
            "name",
            "enrollment_key",
            "identifier",
            "device_secret",
            "client_id",
            "request_id",
            "proof",
        },
    }
    for section, fields in shapes.items():
        assert VECTORS[section], section
        for vector in VECTORS[section]:
            assert set(vector) == fields, (section, vector.get("name"))
        names = _ids(section) if section != "topics" else []
        assert len(names) == len(set(names)), section
    assert len(VECTORS["sealed"]) >= 3 and len(VECTORS["proofs"]) >= 3
    assert {r["code"] for r in VECTORS["replies"]} - {None} == set(protocol.REPLY_CODES)


@pytest.mark.parametrize("vector", VECTORS["topics"], ids=lambda v: v["client_id"][:20])
def test_topic_vectors(vector: dict[str, str]) -> None:
    prefix, client_id = vector["prefix"], vector["client_id"]
    assert protocol.activate_topic(prefix, client_id) == vector["activate"]
    assert protocol.reply_topic(prefix, client_id) == vector["reply"]
    assert protocol.client_id_from_topic(prefix, vector["activate"]) == client_id


@pytest.mark.parametrize("vector", VECTORS["requests"], ids=_ids("requests"))
def test_request_vector_is_accepted_or_refused_as_stated(vector: dict[str, Any]) -> None:
    payload = vector["payload"].encode("utf-8")
    if vector["valid"]:
        assert vector["code"] is None
        request = protocol.parse_request(payload)
        if request.public_key is not None:
            assert len(keys.decode_public_key(request.public_key)) == 32
        return
    assert vector["code"] == "malformed"
    try:
        request = protocol.parse_request(payload)
    except Malformed as exc:
        refusal = exc.message
    else:
        # Past the parser only a public key that is not a usable X25519 key is refused.
        assert request.public_key is not None, vector["name"]
        with pytest.raises(ValueError, match=r"low-order|32 bytes|base64|padding"):
            keys.decode_public_key(request.public_key)
        return
    assert refusal.endswith(".")  # one sentence, as every refusal


#: Request vectors whose refusal a JSON Schema cannot express (checked in code).
_BEYOND_THE_SCHEMA = {
    "too_large": "a byte count",
    "public_key_zero": "a low-order point",
    "public_key_order_8": "a low-order point",
    "v_float": "JSON Schema counts 1.0 as the integer 1; the bridge does not",
}


@pytest.mark.parametrize("vector", VECTORS["requests"], ids=_ids("requests"))
def test_request_schema_agrees_with_each_request_vector(vector: dict[str, Any]) -> None:
    try:
        instance = json.loads(vector["payload"])
    except ValueError:
        assert not vector["valid"]  # not JSON: no schema applies
        return
    verdict = REQUEST_SCHEMA.is_valid(instance)
    if vector["name"] in _BEYOND_THE_SCHEMA:
        assert verdict and not vector["valid"]
    else:
        assert verdict == vector["valid"], vector["name"]


@pytest.mark.parametrize("vector", VECTORS["replies"], ids=_ids("replies"))
def test_reply_vector_validates_and_states_its_fields(vector: dict[str, Any]) -> None:
    reply = json.loads(vector["payload"])
    REPLY_SCHEMA.validate(reply)
    REPLIES.validate_json(vector["payload"])
    assert reply["v"] == 1
    assert reply["status"] == vector["status"]
    assert reply.get("code") == vector["code"]
    assert reply.get("retry_after") == vector["retry_after"]
    assert reply.get("key") == vector["key"]
    assert ("sealed_key" in reply) == vector["sealed"]
    if vector["status"] == "error":
        assert vector["key"] is None and not vector["sealed"]
        assert (vector["retry_after"] is not None) == (vector["code"] in protocol.RETRY_AFTER_CODES)


@pytest.mark.parametrize("vector", VECTORS["sealed"], ids=_ids("sealed"))
def test_sealed_vector_opens_with_unseal_and_is_reproduced_by_seal(
    vector: dict[str, str],
) -> None:
    b64 = base64.b64decode
    device = X25519PrivateKey.from_private_bytes(b64(vector["device_private"]))
    assert device.public_key().public_bytes_raw() == b64(vector["device_public"])
    ephemeral = X25519PrivateKey.from_private_bytes(b64(vector["ephemeral_private"]))
    assert ephemeral.public_key().public_bytes_raw() == b64(vector["epk"])
    sealed = {
        "alg": keys.SEAL_ALG,
        "epk": vector["epk"],
        "nonce": vector["nonce"],
        "ciphertext": vector["ciphertext"],
    }
    assert keys.unseal(device, sealed, vector["request_id"]) == vector["key"]
    # Bound to its request id: another one does not open it.
    with pytest.raises(ValueError, match="does not open"):
        keys.unseal(device, sealed, vector["request_id"] + "x")
    again = keys.seal_for_vectors(
        vector["key"],
        b64(vector["device_public"]),
        vector["request_id"],
        b64(vector["ephemeral_private"]),
        b64(vector["nonce"]),
    )
    assert again == sealed
    reply = json.loads(vector["reply"])
    REPLY_SCHEMA.validate(reply)
    assert reply["sealed_key"] == sealed and reply["request_id"] == vector["request_id"]


@pytest.mark.parametrize("vector", VECTORS["proofs"], ids=_ids("proofs"))
def test_proof_vector_matches_device_secret_and_proof(vector: dict[str, str]) -> None:
    secret = keys.device_secret(bytes.fromhex(vector["enrollment_key"]), vector["identifier"])
    assert secret.hex() == vector["device_secret"]
    proof = keys.device_proof(secret, vector["client_id"], vector["request_id"])
    assert proof == vector["proof"]
    enrollment = [bytes.fromhex(vector["enrollment_key"])]
    args = (vector["identifier"], vector["client_id"], vector["request_id"])
    assert keys.proof_is_valid(enrollment, *args, vector["proof"])
    assert not keys.proof_is_valid(enrollment, vector["identifier"], "other", args[2], proof)


def test_readme_known_answer_is_a_proof_vector() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    first = VECTORS["proofs"][0]
    assert first["enrollment_key"] == bytes(range(32)).hex()
    assert first["device_secret"] in readme and first["proof"] in readme


def test_builders_send_what_the_reply_models_describe() -> None:
    """Every reply builder's bytes validate against the models and the schema."""
    device_public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    key = keys.generate_key()
    bodies = [
        protocol.ok_reply("r-1", "acme", "thermo-1", "001A2B3C4D5E", key=key),
        protocol.ok_reply(
            "r-1",
            "acme",
            "thermo-1",
            "001A2B3C4D5E",
            sealed_key=keys.seal(key, device_public, "r-1"),
        ),
        *(
            protocol.error_reply("r-1", code, "A sentence.", 5)
            if code in protocol.RETRY_AFTER_CODES
            else protocol.error_reply("r-1", code, "A sentence.")
            for code in protocol.REPLY_CODES
        ),
        protocol.error_reply(None, "malformed", "The request is not valid JSON."),
    ]
    for body in bodies:
        REPLIES.validate_json(body)
        REPLY_SCHEMA.validate(json.loads(body))


@pytest.mark.parametrize(
    ("name", "reply"),
    [
        ("key and sealed_key", {"sealed_key": {}, "key": "ab" * 20}),
        ("no key at all", {}),
        ("upper-case key", {"key": "AB" * 20}),
        ("short key", {"key": "ab" * 19}),
        ("v 2", {"key": "ab" * 20, "v": 2}),
        ("unknown field", {"key": "ab" * 20, "extra": 1}),
    ],
)
def test_reply_schema_refuses_a_wrong_success(name: str, reply: dict[str, Any]) -> None:
    base = {
        "v": 1,
        "request_id": "r-1",
        "status": "ok",
        "vendor": "acme",
        "model": "thermo-1",
        "identifier": "001A2B3C4D5E",
    }
    assert not REPLY_SCHEMA.is_valid({**base, **reply}), name


@pytest.mark.parametrize(
    ("name", "reply"),
    [
        ("rate_limited without retry_after", {"code": "rate_limited"}),
        ("unavailable without retry_after", {"code": "unavailable"}),
        ("retry_after on a final refusal", {"code": "revoked", "retry_after": 5}),
        ("null retry_after", {"code": "unavailable", "retry_after": None}),
        ("unknown code", {"code": "nope"}),
        ("empty message", {"code": "revoked", "message": ""}),
    ],
)
def test_reply_schema_refuses_a_wrong_error(name: str, reply: dict[str, Any]) -> None:
    base = {"v": 1, "request_id": "r-1", "status": "error", "message": "A sentence."}
    assert not REPLY_SCHEMA.is_valid({**base, **reply}), name


def test_every_reply_fits_the_documented_2048_byte_buffer() -> None:
    """docs/protocol.md promises devices that 2048 bytes hold any reply: the worst cases.

    Every field at its limit in 4-byte UTF-8 characters: vendor, model and identifier of
    64 characters, a 256-character serial pattern quoted by invalid_identifier, a
    128-character client id, a 64-character request id, a 128-hex-character key.
    """
    from bridge import identifiers, provisioner  # noqa: PLC0415
    from bridge.codes import Code  # noqa: PLC0415
    from bridge.errors import InvalidIdentifier  # noqa: PLC0415
    from bridge.logins import LoginNamespace  # noqa: PLC0415
    from bridge.records import ActivationOutcome, ModelRow  # noqa: PLC0415

    wide = "\U0001d538"  # MATHEMATICAL DOUBLE-STRUCK CAPITAL A: 4 bytes, no case
    name, rid = wide * 64, "r" * 64
    model = ModelRow(1, name, name, "serial", wide * 256, 60, claim_required=True)
    with pytest.raises(InvalidIdentifier) as refused:
        identifiers.normalize("serial", "\U0001d539" * 64, model.pattern)
    messages = [refused.value.message, provisioner._not_approved(model, name)]
    messages += [
        provisioner._refusal(ActivationOutcome(Code(code), None, None), model, name)
        for code in ("not_claimed", "window_expired", "already_activated", "revoked")
    ]
    reserved = LoginNamespace(["c" * 128], bridge_client_id="bridge-x").refusal("c" * 128)
    assert reserved is not None
    messages.append(reserved)
    bodies = [
        protocol.error_reply(rid, code, message, 86_400)
        for code in protocol.REPLY_CODES
        for message in messages
    ]
    long_key = "f" * 128
    device_public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    bodies.append(protocol.ok_reply(rid, name, name, name, key=long_key))
    bodies.append(
        protocol.ok_reply(rid, name, name, name, sealed_key=keys.seal(long_key, device_public, rid))
    )
    largest = max(len(body) for body in bodies)
    assert largest <= 2048, largest


def test_json_examples_of_the_protocol_document_are_valid() -> None:
    """The examples in docs/protocol.md are messages the schemas (and the bridge) accept."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text("utf-8")
    blocks = doc.split("```json\n")[1:]
    examples: list[dict[str, Any]] = []
    for block in blocks:
        text = block.split("```")[0]
        try:
            examples.append(json.loads(text))
        except ValueError:  # one message per line
            examples.extend(json.loads(line) for line in text.splitlines() if line)
    assert len(examples) >= 5
    for example in examples:
        if "status" in example:
            REPLY_SCHEMA.validate(example)
        else:
            REQUEST_SCHEMA.validate(example)
            assert wire.form_error(json.dumps(example).encode()) is None


def test_fixed_ephemeral_sealing_is_used_only_for_vectors() -> None:
    """A fixed ephemeral key or nonce in the bridge would give every sealed key away."""
    package = Path(wire.__file__).resolve().parent
    users = sorted(
        path.name
        for path in package.glob("*.py")
        if "seal_for_vectors" in path.read_text(encoding="utf-8")
    )
    assert users == ["keys.py", "wire.py"]
    device_public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    first, second = (keys.seal("ab" * 20, device_public, "r-1") for _ in range(2))
    assert first["epk"] != second["epk"] and first["nonce"] != second["nonce"]
