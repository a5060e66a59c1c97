"""Request and response bodies of the HTTP API, and how records become them.

Pydantic models only (no web framework here): the routes (:mod:`bridge.web.routes`)
declare themselves with them, and FastAPI turns them into the OpenAPI document. Every
rule a body's field is checked against is stated in that document too (``pattern``,
lengths, enums), so that a client generated from it sends only what is accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from bridge import identifiers, text
from bridge.records import DeviceRow, ModelRow
from bridge.text import printable

#: :func:`bridge.text.printable` as the OpenAPI document states it: the one definition
#: of printable text, in ECMA-262 syntax (and Python's).
PRINTABLE: Final = text.PRINTABLE_PATTERN


#: A new vendor or model name (:func:`bridge.text.check_name`) as far as a pattern can
#: say it: no "/", no control character, no space at either end, not "." or "..". That it
#: holds no invisible (format, separator, unassigned) character is said in words.
_ANY = "[^/\\u0000-\\u001f\\u007f-\\u009f]"  # a character a name may hold
# ... at either end: no whitespace that str.strip() removes (the controls aside)
SPACES: Final = "\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_END = f"[^/\\u0000-\\u001f\\u007f-\\u009f{SPACES}]"
_SOLO = f"[^./\\u0000-\\u001f\\u007f-\\u009f{SPACES}]"  # ... alone, or first before a second
NEW_NAME: Final = f"^(?:{_SOLO}|{_SOLO}{_END}|\\.{_SOLO}|{_END}{_ANY}+{_END})$"

#: Control characters (C0, DEL, C1) as the inside of a JSON Schema character class.
CONTROLS: Final = "\\u0000-\\u001f\\u007f-\\u009f"
#: Free text shown to people (text.check_text): printable, not only spaces; that it holds
#: no invisible (format, unassigned) character is said in words.
SHOWN_TEXT: Final = f"^[^{CONTROLS}]*[^{CONTROLS}{SPACES}][^{CONTROLS}]*$"


def shown_text(limit: int, description: str) -> object:
    """The ``Field`` of free text shown to people: 1 to ``limit`` characters, :data:`SHOWN_TEXT`."""
    return Field(
        min_length=1,
        max_length=limit,
        description=description,
        json_schema_extra={"pattern": SHOWN_TEXT},
    )


def _json_integer(value: object) -> object:
    # JSON's integers only, as the document says: pydantic alone would also take "5" or true.
    if isinstance(value, str | bool):
        raise ValueError("must be a whole number")  # noqa: TRY004 (a validation error)
    return value


#: The document's ``boolean`` and ``integer``: no "true", 1, "5" standing in for them.
JsonBool = StrictBool
JsonInt = Annotated[int, BeforeValidator(_json_integer)]

Name = Annotated[
    str,
    Field(min_length=1, max_length=text.NAME_MAX, json_schema_extra={"pattern": PRINTABLE}),
    AfterValidator(printable),
]
NewName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=text.NAME_MAX,
        description="no '/', no control or invisible character, no space at either end, "
        "not '.' or '..'",
        json_schema_extra={"pattern": NEW_NAME},
    ),
    AfterValidator(printable),
]
Number = Annotated[
    str,
    Field(
        min_length=1,
        max_length=identifiers.MAX_LENGTH,
        description="as printed on the label; which spellings are valid depends on the "
        "model's kind and pattern (else 422 invalid_identifier)",
        json_schema_extra={"pattern": PRINTABLE},
    ),
    AfterValidator(printable),
]

#: Why a lifecycle change was made: kept in its audit row (a device's owner reads it in
#: their history). One definition for every action that takes one, resolve's included.
Reason = Annotated[
    str,
    shown_text(
        text.REASON_MAX,
        "why, recorded in the audit log (an owner reads it in their history); "
        "no invisible character",
    ),
    AfterValidator(printable),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorBody(_Body):
    code: str = Field(description="the protocol error code, as the CLI prints it")
    message: str = Field(description="one sentence for a person")
    suggestion: str | None = Field(
        default=None, description='the identifier a "did you mean ...?" refers to'
    )
    retry_after: int | None = Field(default=None, description="seconds, with 429 and 503")
    support_contact: str | None = Field(
        default=None, description="a refused claim: the vendor's support contact for the model"
    )


class Me(_Body):
    token_id: str
    role: str
    subject: str | None


class ClaimRequest(_Body):
    vendor: Name
    model: Name
    identifier: Number
    reason: Reason | None = None


class Device(_Body):
    vendor: str
    model: str
    identifier: str = Field(description="canonical form, shown the way people read it")
    state: str = Field(description="approved, claimed, activated or revoked")
    owner: str | None
    window_ends_at: datetime | None
    window_seconds_left: int | None = Field(description="of the open activation window")
    activated_at: datetime | None
    approved_at: datetime


class ClaimResponse(_Body):
    message: str
    already_yours: bool
    device: Device


class DeviceList(_Body):
    devices: list[Device]


class ModelRequest(_Body):
    # A pattern is for serial numbers only; said in the document as well.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"kind": {"const": identifiers.Kind.SERIAL.value}}},
                {"properties": {"pattern": {"type": "null"}}},
            ]
        }
    )

    vendor: NewName | None = Field(
        default=None, description="an administrator names the vendor; a vendor token implies it"
    )
    model: NewName
    kind: identifiers.Kind
    pattern: (
        Annotated[
            str,
            Field(
                max_length=identifiers.MAX_PATTERN_LENGTH,
                description="serial kind only: RE2 syntax (no backreferences or lookaround), "
                "at most 2,000 compiled steps",
                # RE2 syntax, not the document's ECMA-262 "regex" format: said in words.
                json_schema_extra={"pattern": PRINTABLE},
            ),
            AfterValidator(printable),
        ]
        | None
    ) = None
    window_seconds: JsonInt = Field(default=86_400, ge=1, le=366 * 86_400)
    claim_required: JsonBool = True
    plaintext_keys: JsonBool = Field(
        default=False,
        description="also deliver keys in plaintext to requests without a public key, for "
        "devices that cannot do X25519; otherwise such requests get seal_required",
    )


class Model(_Body):
    vendor: str
    model: str
    kind: str
    pattern: str | None
    window_seconds: int
    claim_required: bool
    plaintext_keys: bool = Field(description="keys may travel in plaintext (vendor's choice)")
    proof_required: bool = Field(
        description="activations must prove the device's factory secret (enrollment key)"
    )


class ApproveRequest(_Body):
    identifiers: list[Number] = Field(min_length=1, max_length=10_000)
    reason: Reason | None = None


class ApproveResponse(_Body):
    added: int
    already: int


#: Caps of one bulk approval request (and 1,000,000 per range, as in a file:
#: :data:`bridge.approval_file.MAX_RANGE`). Over a cap, the request is refused
#: whole (413 ``too_large``, or 422 for the rows) before anything is loaded.
BULK_MAX_ROWS = 10_000
BULK_MAX_IDENTIFIERS = 1_000_000


class BulkApproveRequest(_Body):
    rows: list[
        Annotated[
            str,
            Field(max_length=200, json_schema_extra={"pattern": PRINTABLE}),
            AfterValidator(printable),
        ]
    ] = Field(
        min_length=1,
        max_length=BULK_MAX_ROWS,
        description=f"identifiers or ranges FIRST..LAST, as in an approval file; at most "
        f"{BULK_MAX_ROWS:,} rows and {BULK_MAX_IDENTIFIERS:,} identifiers in all",
    )
    dry_run: JsonBool = False
    reason: Reason | None = None


class Refused(_Body):
    row: int = Field(description="1-based position in rows")
    text: str
    reason: str


class BulkApproveResponse(_Body):
    added: int
    already: int
    duplicates: int
    refused: list[Refused] = Field(description="the first 1,000 refused rows")
    refused_total: int = Field(description="how many rows were refused")
    dry_run: bool


class UnapproveRequest(_Body):
    identifiers: list[Number] = Field(min_length=1, max_length=10_000)
    force: JsonBool = Field(default=False, description="also remove claimed or activated devices")
    reason: Reason | None = None


class UnapproveResponse(_Body):
    removed: list[str]
    missing: list[str]


class DevicePage(_Body):
    devices: list[Device]
    next_after: str | None = Field(description="pass as `after` for the next page")


class ActionResponse(_Body):
    message: str = Field(description="what happened, in one sentence")
    device: Device


class ActionRequest(_Body):
    """The optional body of a release, revoke or re-enable: the request may carry none."""

    reason: Reason | None = None


class TransferRequest(_Body):
    to: Annotated[
        str,
        Field(min_length=1, max_length=text.PERSON_MAX, json_schema_extra={"pattern": PRINTABLE}),
        AfterValidator(printable),
    ]
    reason: Reason | None = None


class AuditEntryBody(_Body):
    id: int
    at: datetime
    action: str
    code: str
    actor: str | None
    client_id: str | None
    request_id: str | None
    vendor: str | None
    model: str | None
    identifier_presented: str | None
    identifier: str | None
    owner: str | None
    detail: str | None
    count: int = Field(
        default=1,
        description="attempts this entry stands for: repeated device failures are tallied "
        "per client id, code and window (the fields are the first attempt's)",
    )
    last_at: datetime | None = Field(default=None, description="the last attempt of a tally")


class AuditList(_Body):
    entries: list[AuditEntryBody]


def seconds_left(ends: datetime | None, now: datetime) -> int | None:
    return None if ends is None else max(0, int((ends - now).total_seconds()))


def device_body(row: DeviceRow, kind: str) -> Device:
    return Device(
        vendor=row.vendor,
        model=row.model,
        identifier=identifiers.display(kind, row.identifier),
        state=row.state,
        owner=row.owner,
        window_ends_at=row.window_ends_at,
        window_seconds_left=seconds_left(row.window_ends_at, datetime.now(UTC)),
        activated_at=row.activated_at,
        approved_at=row.approved_at,
    )


def model_body(row: ModelRow) -> Model:
    return Model(
        vendor=row.vendor,
        model=row.model,
        kind=row.kind,
        pattern=row.pattern,
        window_seconds=row.window_seconds,
        claim_required=row.claim_required,
        plaintext_keys=row.plaintext_keys,
        proof_required=row.proof_required,
    )
