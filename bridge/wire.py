"""The published wire artifacts: JSON Schemas and test vectors of protocol v1.

``python -m bridge.wire --write`` regenerates ``schemas/wire/`` from the pydantic
models and builders of :mod:`bridge.protocol` and the derivations of :mod:`bridge.keys`;
``--check`` exits 1 when the checked-in files differ from what this code makes
(a unit test runs the same check). Every input of a vector is fixed, so the output
is byte for byte the same on every run, and any implementation (the C library,
firmware, another bridge) can check itself against ``vectors.json``.

A request vector states by hand whether the bridge accepts its form; the unit tests
hold the bridge's own parser to each statement, so the file is a claim that is checked,
not a recording of whatever the code did.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import TypeAdapter

from bridge import keys, protocol
from bridge.errors import Malformed

#: Where the artifacts live in a checkout.
WIRE_DIR = Path(__file__).resolve().parent.parent / "schemas" / "wire"
SCHEMA_ID = "https://provisioning-bridge.invalid/schemas/wire/v1/"


def form_error(payload: bytes) -> str | None:
    """Why the bridge refuses this request's form (one sentence), or None when it accepts it.

    The form is everything checked before the model is looked up: :func:`protocol.parse_request`
    and the public key (:func:`keys.decode_public_key`, which the provisioner applies next).
    """
    try:
        request = protocol.parse_request(payload)
    except Malformed as exc:
        return exc.message
    if request.public_key is not None:
        try:
            keys.decode_public_key(request.public_key)
        except ValueError as exc:
            return f"public_key: {exc}"
    return None


# -- schemas ---------------------------------------------------------------------------


def request_schema() -> dict[str, Any]:
    schema = protocol.ActivationRequest.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID + "request.schema.json",
        **schema,
        "description": (
            "Activation request of protocol v1 (docs/protocol.md), published on "
            "{prefix}/activate/{client_id}. The payload is UTF-8 JSON of at most "
            f"{protocol.MAX_PAYLOAD_BYTES} bytes; public_key must also be a usable X25519 "
            "key (not a low-order point), which a schema cannot express."
        ),
    }


def reply_schema() -> dict[str, Any]:
    schema = TypeAdapter(protocol.ActivationReply).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID + "reply.schema.json",
        "title": "ActivationReply",
        "description": (
            "Activation reply of protocol v1 (docs/protocol.md), published on "
            "{prefix}/reply/{client_id}: a plaintext success, a sealed success, or an error."
        ),
        **schema,
    }


# -- vectors ---------------------------------------------------------------------------


def _fixed_bytes(label: str, n: int = 32) -> bytes:
    """Fixed pseudo-random bytes named by a label: anyone can recompute them."""
    return hashlib.sha256(label.encode()).digest()[:n]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _topics() -> list[dict[str, str]]:
    cases = [
        ("provision", "device-0001"),
        ("provision", "a"),
        ("provision", "AB.cd_ef:01-23"),
        ("provision", "c" * 128),
        ("acme/fleet/prov", "thermo-001A2B3C4D5E"),
    ]
    return [
        {
            "prefix": prefix,
            "client_id": client_id,
            "activate": protocol.activate_topic(prefix, client_id),
            "reply": protocol.reply_topic(prefix, client_id),
        }
        for prefix, client_id in cases
    ]


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


_DEVICE_PUBLIC = _b64(_public_of(_fixed_bytes("vector device 1")))
_PROOF = keys.device_proof(
    keys.device_secret(bytes(range(32)), "001A2B3C4D5E"), "device-0001", "r-1"
)
_BASE = {"v": 1, "request_id": "r-1", "vendor": "acme", "model": "thermo-1"}
_MAC = {**_BASE, "identifier": "00:1A:2B:3C:4D:5E"}


def _with(**fields: Any) -> str:
    return _json({**_MAC, **fields})


def _without(field: str) -> str:
    return _json({k: v for k, v in {**_MAC, "public_key": _DEVICE_PUBLIC}.items() if k != field})


def _padded_to(size: int) -> str:
    # Valid JSON of exactly `size` bytes: trailing whitespace is allowed by JSON.
    body = _with(public_key=_DEVICE_PUBLIC)
    return body + " " * (size - len(body.encode()))


@dataclass(frozen=True)
class _Case:
    name: str
    payload: str
    valid: bool
    note: str


#: Low-order points of Curve25519 (refused: every shared secret with them is zero).
_ZERO_POINT = _b64(bytes(32))
_ORDER_8_POINT = _b64(
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
)

_REQUESTS = [
    _Case(
        "valid_sealed",
        _with(public_key=_DEVICE_PUBLIC),
        True,
        "the usual request: the key comes back sealed",
    ),
    _Case(
        "valid_sealed_with_proof",
        _with(public_key=_DEVICE_PUBLIC, proof=_PROOF),
        True,
        "with a device proof (checked only by models that require one)",
    ),
    _Case("valid_plaintext", _with(), True, "no public_key: only plaintext models grant it"),
    _Case(
        "valid_without_v",
        _json({k: v for k, v in _MAC.items() if k != "v"}),
        True,
        "v is optional",
    ),
    _Case(
        "valid_nulls",
        _with(public_key=None, proof=None, v=None),
        True,
        "null optional fields count as absent",
    ),
    _Case(
        "valid_longest_ids",
        _json(
            {
                **_BASE,
                "request_id": "Az09._:-" * 8,
                "identifier": "S" * 64,
                "vendor": "v" * 64,
                "model": "m" * 64,
            }
        ),
        True,
        "request_id and text fields at their 64-character limit",
    ),
    _Case(
        "valid_unicode",
        _json({**_BASE, "vendor": "Acmé", "model": "Thermö-1", "identifier": "ÄB-12"}),
        True,
        "text fields are UTF-8; the limit counts characters, not bytes",
    ),
    _Case(
        "valid_escapes_and_spaces",
        '{ "v" : 1 , "request_id" : "r-1", "vendor" : "\\u0061cme", '
        '"model" : "thermo-1", "identifier" : "00:1A:2B:3C:4D:5E" }',
        True,
        "any valid JSON spelling: whitespace and \\u escapes",
    ),
    _Case(
        "valid_4096_bytes",
        _padded_to(protocol.MAX_PAYLOAD_BYTES),
        True,
        "exactly the size limit",
    ),
    _Case("not_json", '{"request_id": "r-1", ', False, "not JSON: truncated"),
    _Case("empty", "", False, "not JSON: an empty payload"),
    _Case("nan", _with().replace('"v":1', '"v":NaN'), False, "not JSON: NaN"),
    _Case("not_object_array", "[]", False, "not an object: an array"),
    _Case("not_object_string", '"r-1"', False, "not an object: a string"),
    _Case("not_object_null", "null", False, "not an object: null"),
    _Case(
        "too_large",
        _padded_to(protocol.MAX_PAYLOAD_BYTES + 1),
        False,
        "4097 bytes: one over the limit",
    ),
    _Case("missing_request_id", _without("request_id"), False, "missing field"),
    _Case("missing_vendor", _without("vendor"), False, "missing field"),
    _Case("missing_model", _without("model"), False, "missing field"),
    _Case("missing_identifier", _without("identifier"), False, "missing field"),
    _Case(
        "unknown_field",
        _with(publickey=_DEVICE_PUBLIC),
        False,
        "unknown field (a typo of public_key)",
    ),
    _Case("identifier_number", _with(identifier=1234), False, "ill-typed: a number"),
    _Case("vendor_empty", _with(vendor=""), False, "ill-typed: empty string"),
    _Case("vendor_too_long", _with(vendor="v" * 65), False, "65 characters"),
    _Case(
        "identifier_control_character",
        _with(identifier="00:1A\x00"),
        False,
        "control character (here NUL, as a JSON escape)",
    ),
    _Case("request_id_too_long", _with(request_id="r" * 65), False, "65 characters"),
    _Case("request_id_space", _with(request_id="r 1"), False, "character outside the set"),
    _Case("request_id_number", _with(request_id=1), False, "ill-typed: a number"),
    _Case(
        "public_key_not_base64",
        _with(public_key="not base64!"),
        False,
        "bad base64 key",
    ),
    _Case(
        "public_key_31_bytes",
        _with(public_key=_b64(bytes(range(1, 32)))),
        False,
        "base64 of 31 bytes, not 32",
    ),
    _Case(
        "public_key_unpadded",
        _with(public_key=_DEVICE_PUBLIC.rstrip("=")),
        False,
        "base64 without its padding",
    ),
    _Case(
        "public_key_urlsafe",
        _with(public_key=_b64(bytes([0xFB] * 32)).replace("+", "-").replace("/", "_")),
        False,
        "URL-safe base64 is not standard base64",
    ),
    _Case("public_key_zero", _with(public_key=_ZERO_POINT), False, "low-order key: zero"),
    _Case(
        "public_key_order_8",
        _with(public_key=_ORDER_8_POINT),
        False,
        "low-order key: a point of order 8",
    ),
    _Case("v_2", _with(v=2), False, "v != 1"),
    _Case("v_true", _with(v=True), False, "v must be the integer 1, not true"),
    _Case("v_string", _with(v="1"), False, "v must be the integer 1, not a string"),
    _Case("v_float", _with(v=1.0), False, "v must be the integer 1, not 1.0"),
    _Case("proof_uppercase", _with(proof=_PROOF.upper()), False, "bad proof format: upper case"),
    _Case("proof_short", _with(proof=_PROOF[:63]), False, "bad proof format: 63 characters"),
    _Case(
        "proof_not_hex",
        _with(proof="g" * 64),
        False,
        "bad proof format: not hex",
    ),
]


def _requests() -> list[dict[str, Any]]:
    out = []
    for case in _REQUESTS:
        out.append(
            {
                "name": case.name,
                "payload": case.payload,
                "valid": case.valid,
                "code": None if case.valid else "malformed",
                "note": case.note,
            }
        )
    return out


@dataclass(frozen=True)
class _Sealed:
    name: str
    device: str  # label of the device private key
    ephemeral: str
    nonce: str
    request_id: str
    key: str


_SEALED = [
    _Sealed("sealed_default_key", "vector device 1", "vector ephemeral 1", "nonce 1", "r-1", ""),
    _Sealed(
        "sealed_long_request_id",
        "vector device 2",
        "vector ephemeral 2",
        "nonce 2",
        "Az09._:-" * 8,
        "",
    ),
    _Sealed(
        "sealed_256_bit_key",
        "vector device 3",
        "vector ephemeral 3",
        "nonce 3",
        "b1946ac92492d234",
        "k256",
    ),
]


def _sealed() -> list[dict[str, Any]]:
    out = []
    for case in _SEALED:
        device = _fixed_bytes(case.device)
        ephemeral = _fixed_bytes(case.ephemeral)
        nonce = _fixed_bytes(case.nonce, 12)
        key = (_fixed_bytes(case.name, 32) if case.key else _fixed_bytes(case.name, 20)).hex()
        device_public = _public_of(device)
        sealed = keys.seal_for_vectors(key, device_public, case.request_id, ephemeral, nonce)
        reply = protocol.ok_reply(
            case.request_id, "acme", "thermo-1", "001A2B3C4D5E", sealed_key=sealed
        )
        out.append(
            {
                "name": case.name,
                "device_private": _b64(device),
                "device_public": _b64(device_public),
                "ephemeral_private": _b64(ephemeral),
                "epk": sealed["epk"],
                "nonce": sealed["nonce"],
                "request_id": case.request_id,
                "key": key,
                "ciphertext": sealed["ciphertext"],
                "reply": reply.decode(),
            }
        )
    return out


#: Sentences as the bridge words them (the device shows ``message``, never parses it).
_ERROR_MESSAGES: dict[str, str] = {
    "malformed": "The field 'proof' must be 64 lowercase hex characters (an HMAC-SHA256).",
    "invalid_identifier": (
        "The MAC address '00:1A:2B:3C:4D:5' is not valid: it must have 12 hex digits."
    ),
    "unknown_model": (
        "The model acme/thermo-9 is not registered; check the vendor and model names "
        "the firmware sends."
    ),
    "not_approved": (
        "The MAC address 00:1A:2B:3C:4D:5E is not on the approval list of acme/thermo-1."
    ),
    "not_claimed": (
        "The MAC address 00:1A:2B:3C:4D:5E is approved for acme/thermo-1 but no owner has "
        "claimed it yet; the owner must add it to their account first."
    ),
    "window_expired": (
        "The activation window of the MAC address 00:1A:2B:3C:4D:5E has closed; the owner "
        "can re-enable the device to open a new one."
    ),
    "already_activated": (
        "A key was already issued for the MAC address 00:1A:2B:3C:4D:5E; the device must be "
        "re-enabled before it can activate again."
    ),
    "revoked": (
        "The key of the MAC address 00:1A:2B:3C:4D:5E was revoked; the device must be "
        "re-enabled before it can activate again."
    ),
    "seal_required": (
        "The model acme/thermo-1 delivers keys only sealed: the request must carry "
        "'public_key', the standard base64 of the device's X25519 public key."
    ),
    "client_id_reserved": (
        "This client id is the broker login of another device; each device must activate "
        "with a client id of its own."
    ),
    "rate_limited": "Too many failed activation attempts; retry after 60 seconds.",
    "unavailable": "The database cannot be reached now; retry after 5 seconds.",
}
_RETRY_AFTER = {"rate_limited": 60, "unavailable": 5}


def _replies(sealed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    plain_key = _fixed_bytes("plain key", 20).hex()
    out: list[dict[str, Any]] = [
        {
            "name": "ok_plain",
            "payload": protocol.ok_reply(
                "r-1", "acme", "thermo-1", "001A2B3C4D5E", key=plain_key
            ).decode(),
            "status": "ok",
            "code": None,
            "retry_after": None,
            "key": plain_key,
            "sealed": False,
        },
        {
            "name": "ok_sealed",
            "payload": sealed[0]["reply"],
            "status": "ok",
            "code": None,
            "retry_after": None,
            "key": None,
            "sealed": True,
        },
        {
            "name": "ok_unicode",
            "payload": protocol.ok_reply(
                "r-2", "Acmé", "Thermö-1", "ÄB-12", key=plain_key
            ).decode(),
            "status": "ok",
            "code": None,
            "retry_after": None,
            "key": plain_key,
            "sealed": False,
        },
    ]
    for code in protocol.REPLY_CODES:
        retry_after = _RETRY_AFTER.get(code)
        out.append(
            {
                "name": f"error_{code}",
                "payload": protocol.error_reply(
                    "r-1", code, _ERROR_MESSAGES[code], retry_after
                ).decode(),
                "status": "error",
                "code": code,
                "retry_after": retry_after,
                "key": None,
                "sealed": False,
            }
        )
    out.append(
        {
            "name": "error_malformed_no_request_id",
            "payload": protocol.error_reply(
                None, "malformed", "The request is not valid JSON."
            ).decode(),
            "status": "error",
            "code": "malformed",
            "retry_after": None,
            "key": None,
            "sealed": False,
        }
    )
    return out


@dataclass(frozen=True)
class _Proof:
    name: str
    enrollment_key: bytes
    identifier: str
    client_id: str
    request_id: str


_PROOFS = [
    # The known-answer vector of the README ("Device proof").
    _Proof("readme_mac", bytes(range(32)), "001A2B3C4D5E", "device-0001", "r-1"),
    _Proof(
        "imei",
        _fixed_bytes("enrollment key 2"),
        "490154203237518",
        "tracker-490154203237518",
        "b1946ac92492d234",
    ),
    _Proof(
        "serial_utf8_longest_ids",
        _fixed_bytes("enrollment key 3"),
        "ÄB-12",
        "c" * 128,
        "Az09._:-" * 8,
    ),
]


def _proofs() -> list[dict[str, Any]]:
    out = []
    for case in _PROOFS:
        secret = keys.device_secret(case.enrollment_key, case.identifier)
        out.append(
            {
                "name": case.name,
                "enrollment_key": case.enrollment_key.hex(),
                "identifier": case.identifier,
                "device_secret": secret.hex(),
                "client_id": case.client_id,
                "request_id": case.request_id,
                "proof": keys.device_proof(secret, case.client_id, case.request_id),
            }
        )
    return out


def vectors() -> dict[str, Any]:
    sealed = _sealed()
    return {
        "version": protocol.PROTOCOL_VERSION,
        "topics": _topics(),
        "requests": _requests(),
        "replies": _replies(sealed),
        "sealed": sealed,
        "proofs": _proofs(),
    }


# -- files -----------------------------------------------------------------------------


def artifacts() -> dict[str, str]:
    """File name -> exact text of every generated file."""

    def text(obj: dict[str, Any]) -> str:
        return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"

    return {
        "request.schema.json": text(request_schema()),
        "reply.schema.json": text(reply_schema()),
        "vectors.json": text(vectors()),
    }


def stale(directory: Path = WIRE_DIR) -> list[str]:
    """Names of the files in ``directory`` that differ from what this code generates."""
    out = []
    for name, content in artifacts().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.wire", description="JSON Schemas and test vectors of protocol v1."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write schemas/wire/")
    mode.add_argument("--check", action="store_true", help="exit 1 if schemas/wire/ is stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            print(f"stale: schemas/wire/{name} (run python -m bridge.wire --write)")
        return 1 if names else 0
    WIRE_DIR.mkdir(parents=True, exist_ok=True)
    for name, content in artifacts().items():
        (WIRE_DIR / name).write_text(content, encoding="utf-8")
        print(f"wrote schemas/wire/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
