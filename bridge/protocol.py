"""Protocol v1 on the wire: topics, the request and reply models, reply builders. Pure, no I/O.

The normative contract is ``docs/protocol.md`` (protocol v1); the README summarises
it, and ``schemas/wire/`` holds the JSON Schemas and test vectors generated from
this module (``python -m bridge.wire --write``). Parsing is strict on purpose: an
unknown field or a wrong type is ``malformed`` and says which, so a firmware typo
never passes silently. The reply models describe what the builders below send;
the builders write the bytes, the models (and tests) hold them to the contract.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from bridge import codes, text
from bridge.codes import Code
from bridge.errors import Malformed

MAX_PAYLOAD_BYTES = 4096
PROTOCOL_VERSION = 1

CLIENT_ID_RE = text.plain(text.CLIENT_ID_MAX)
REQUEST_ID_RE = text.plain(text.REQUEST_ID_MAX)

RequestId = Annotated[
    str, StringConstraints(pattern=f"^[{text.PLAIN_CHARS}]{{1,{text.REQUEST_ID_MAX}}}$")
]
#: The device proof: lowercase hex of an HMAC-SHA256 (see :func:`bridge.keys.device_proof`).
Proof = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: Vendor, model and identifier: printable (:mod:`bridge.text`: control characters and
#: lone surrogates are ``malformed`` at the door, not failures deep in the store).
#: Invisible characters are the identifier parser's to refuse (``invalid_identifier``).
Text64 = Annotated[
    str,
    StringConstraints(min_length=1, max_length=text.NAME_MAX),
    AfterValidator(text.printable),
    Field(json_schema_extra={"pattern": text.PRINTABLE_PATTERN}),
]
#: Standard base64 of 32 bytes, for the JSON Schema only: the parser decodes the key
#: and refuses low-order points (:func:`bridge.keys.decode_public_key`).
_PUBLIC_KEY_PATTERN = "^[A-Za-z0-9+/]{43}=$"


class ActivationRequest(BaseModel):
    """What a device publishes on ``{prefix}/activate/{client_id}``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    request_id: RequestId
    vendor: Text64
    model: Text64
    identifier: Text64
    public_key: Annotated[str, Field(json_schema_extra={"pattern": _PUBLIC_KEY_PATTERN})] | None = (
        None
    )
    # Checked only by models that require device proof; others ignore it, so firmware
    # may always send it.
    proof: Proof | None = None
    # StrictInt, then a check: a plain Literal[1] would let JSON `true` pass (True == 1).
    v: Annotated[StrictInt, Field(json_schema_extra={"const": 1})] | None = None

    @field_validator("v")
    @classmethod
    def _version_one(cls, value: int | None) -> int | None:
        if value is not None and value != PROTOCOL_VERSION:
            raise ValueError("unsupported protocol version")
        return value


#: Every ``code`` an activation reply can carry (docs/protocol.md, "Codes"); the same
#: list as :data:`bridge.codes.REPLY_CODES` (a unit test holds the two together).
ReplyCode = Literal[
    Code.MALFORMED,
    Code.INVALID_IDENTIFIER,
    Code.UNKNOWN_MODEL,
    Code.NOT_APPROVED,
    Code.NOT_CLAIMED,
    Code.WINDOW_EXPIRED,
    Code.ALREADY_ACTIVATED,
    Code.REVOKED,
    Code.SEAL_REQUIRED,
    Code.CLIENT_ID_RESERVED,
    Code.RATE_LIMITED,
    Code.UNAVAILABLE,
]
REPLY_CODES: tuple[Code, ...] = get_args(ReplyCode)
#: The codes that always carry ``retry_after``.
RETRY_AFTER_CODES = codes.RETRY_AFTER_CODES
Base64 = Annotated[
    str,
    StringConstraints(pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"),
]
#: A device key: lowercase hex of at least 160 bits (40 characters by default).
KeyHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40,128}$")]


class _Reply(BaseModel):
    # What the bridge sends, described: the builders below write the bytes. A field
    # not listed here never appears, so a device may refuse one it does not know.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SealedKey(_Reply):
    """``sealed_key`` of a sealed success (docs/protocol.md, "Sealed delivery")."""

    alg: Literal["x25519-hkdf-sha256-chacha20poly1305"]
    epk: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{43}=$")]
    nonce: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{16}$")]
    #: ChaCha20-Poly1305 of the key hex: its length plus a 16-byte tag.
    ciphertext: Base64


class OkReply(_Reply):
    """A success with the key in plaintext (models whose vendor chose plaintext delivery)."""

    v: Literal[1]
    request_id: RequestId
    status: Literal["ok"]
    vendor: str
    model: str
    #: The canonical form of the identifier (docs/protocol.md, "Identifiers").
    identifier: str
    key: KeyHex


class SealedOkReply(_Reply):
    """A success with the key sealed to the request's ``public_key``."""

    v: Literal[1]
    request_id: RequestId
    status: Literal["ok"]
    vendor: str
    model: str
    identifier: str
    sealed_key: SealedKey


class ErrorReply(_Reply):
    """A refusal: a code, one sentence, and ``retry_after`` for the codes that wait."""

    model_config = ConfigDict(
        json_schema_extra={
            # retry_after is present exactly for rate_limited and unavailable.
            "if": {"properties": {"code": {"enum": list(RETRY_AFTER_CODES)}}},
            "then": {"required": ["retry_after"]},
            "else": {"not": {"required": ["retry_after"]}},
        }
    )

    v: Literal[1]
    #: Null only when the request carried no valid request id (``malformed``).
    request_id: RequestId | None
    status: Literal["error"]
    code: ReplyCode
    message: Annotated[str, StringConstraints(min_length=1)]
    # Never null on the wire: absent instead (SkipJsonSchema keeps null out of the schema).
    retry_after: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = None


ActivationReply = OkReply | SealedOkReply | ErrorReply


def activate_topic(prefix: str, client_id: str) -> str:
    return f"{prefix}/activate/{client_id}"


def reply_topic(prefix: str, client_id: str) -> str:
    return f"{prefix}/reply/{client_id}"


def subscription(prefix: str, share_group: str | None) -> str:
    """The bridge's subscription: every device's activation topic."""
    topic = f"{prefix}/activate/+"
    return f"$share/{share_group}/{topic}" if share_group else topic


def client_id_from_topic(prefix: str, topic: str) -> str | None:
    """The client id in an activation topic, or None when it breaks the rule."""
    head = f"{prefix}/activate/"
    if not topic.startswith(head):
        return None
    client_id = topic[len(head) :]
    return client_id if CLIENT_ID_RE.fullmatch(client_id) else None


def _reject_constant(name: str) -> float:
    # NaN and Infinity are not JSON; Python would accept them by default.
    raise ValueError(f"{name} is not JSON")


def parse_request(payload: bytes) -> ActivationRequest:
    """Validate a raw payload into a request, or raise Malformed naming what is wrong."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Malformed(
            f"The request is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes."
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed("The request is not valid UTF-8.") from exc
    try:
        data: Any = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise Malformed("The request is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise Malformed(f"The request must be a JSON object, not a JSON {_json_type(data)}.")
    try:
        return ActivationRequest.model_validate(data)
    except ValidationError as exc:
        raise Malformed(_describe(exc)) from exc


def request_id_of(payload: bytes) -> str | None:
    """Best-effort request id of a malformed request, echoed only when it is valid."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        data = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    rid = data.get("request_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and REQUEST_ID_RE.fullmatch(rid) else None


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


_PRINTABLE_RULE = f"a string of 1 to {text.NAME_MAX} characters, none of them control characters"
_FIELD_RULES = {
    "request_id": f"1 to {text.REQUEST_ID_MAX} characters of A-Z a-z 0-9 . _ : -",
    "vendor": _PRINTABLE_RULE,
    "model": _PRINTABLE_RULE,
    "identifier": _PRINTABLE_RULE,
    "public_key": "a standard base64 string of a 32-byte X25519 public key",
    "proof": "64 lowercase hex characters (an HMAC-SHA256)",
    "v": "1",
}


def _describe(exc: ValidationError) -> str:
    """One sentence for the first problem pydantic found."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else "request"
    if error["type"] == "extra_forbidden":
        return f"The request has an unknown field {field[:64]!r}."
    if error["type"] == "missing":
        return f"The request is missing the field {field!r}."
    if field == "v":
        return "The protocol version 'v' must be 1."
    return f"The field {field!r} must be {_FIELD_RULES.get(field, 'valid')}."


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def ok_reply(
    request_id: str,
    vendor: str,
    model: str,
    identifier: str,
    *,
    key: str | None = None,
    sealed_key: dict[str, str] | None = None,
) -> bytes:
    """A success reply: exactly one of ``key`` or ``sealed_key``."""
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "request_id": request_id,
        "status": "ok",
        "vendor": vendor,
        "model": model,
        "identifier": identifier,
    }
    if sealed_key is not None:
        body["sealed_key"] = sealed_key
    else:
        body["key"] = key
    return _dump(body)


def error_reply(
    request_id: str | None, code: str, message: str, retry_after: int | None = None
) -> bytes:
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "request_id": request_id,
        "status": "error",
        "code": code,
        "message": message,
    }
    if retry_after is not None:
        body["retry_after"] = retry_after
    return _dump(body)
