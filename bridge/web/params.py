"""Path and query parameters of the HTTP API, with every rule they are checked against
stated in the OpenAPI document (lengths, ``pattern``, enums), so that what the document
allows is what the API accepts."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Final

from fastapi import Query
from fastapi.params import Path as PathParam
from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

from bridge import identifiers, text
from bridge.admin import STATES
from bridge.text import printable
from bridge.web.bodies import PRINTABLE

_PRINTABLE_TEXT: Final = {"pattern": PRINTABLE}

# Path parameters: a serial number containing "/" cannot be named in a path.
# The examples are the README's: the names a person tries first.
VendorPath = Annotated[
    str,
    PathParam(
        min_length=1, max_length=text.NAME_MAX, examples=["acme"], json_schema_extra=_PRINTABLE_TEXT
    ),
    AfterValidator(printable),
]
ModelPath = Annotated[
    str,
    PathParam(
        min_length=1,
        max_length=text.NAME_MAX,
        examples=["thermo-1"],
        json_schema_extra=_PRINTABLE_TEXT,
    ),
    AfterValidator(printable),
]
NumberPath = Annotated[
    str,
    PathParam(
        min_length=1,
        max_length=identifiers.MAX_LENGTH,
        description="as printed on the label; which spellings are valid depends on the "
        "model's kind and pattern (else 422 invalid_identifier)",
        examples=["00:1A:2B:3C:4D:5E"],
        json_schema_extra=_PRINTABLE_TEXT,
    ),
    AfterValidator(printable),
]


def _printable_or_none(value: str | None) -> str | None:
    return None if value is None else printable(value)


_Printable = AfterValidator(_printable_or_none)


def text_query(max_length: int, description: str | None = None) -> object:
    """A printable text query parameter of at most ``max_length`` characters."""
    return Query(max_length=max_length, description=description, json_schema_extra=_PRINTABLE_TEXT)


VendorQuery = Annotated[str | None, text_query(text.NAME_MAX), _Printable]
ModelQuery = Annotated[str | None, text_query(text.NAME_MAX), _Printable]
OwnerQuery = Annotated[str | None, text_query(text.PERSON_MAX), _Printable]
NumberQuery = Annotated[
    str | None,
    text_query(
        identifiers.MAX_LENGTH,
        "with vendor and model, a spelling valid for the model (else 422 invalid_identifier)",
    ),
    _Printable,
]
AfterQuery = Annotated[
    str | None,
    text_query(
        identifiers.MAX_LENGTH,
        "next_after of the previous page: a spelling valid for the model "
        "(else 422 invalid_identifier)",
    ),
    _Printable,
]
ClientIdQuery = Annotated[str | None, text_query(text.CLIENT_ID_MAX), _Printable]
CodeQuery = Annotated[str | None, text_query(text.NAME_MAX), _Printable]
# The state is checked by Admin (its refusal is the command line's): the enum is said here.
StateQuery = Annotated[
    str | None,
    Query(description=", ".join(STATES), json_schema_extra={"enum": list(STATES)}),
    _Printable,
]

# A date and time, ISO 8601, seconds and fraction optional, zone optional (then UTC):
# exactly the calendar's dates, so that the document allows no day that does not exist.
_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[2468][048]|[13579][26]|0[48])00)"
_DAY = (
    f"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    f"|{_LEAP}-02-29)"
)
_TIME = "T(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,6})?)?"
_ZONE = "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
INSTANT: Final = f"^{_DAY}{_TIME}{_ZONE}$"
_INSTANT = re.compile(INSTANT)


def _instant_text(value: object) -> object:
    # Only what the document states is parsed: pydantic alone would also take a number
    # (seconds since 1970) or a date without a time.
    if isinstance(value, str) and not _INSTANT.fullmatch(value):
        raise ValueError("must be a date and time such as 2024-01-01T00:00:00Z")
    return value


def _instant(value: datetime | None) -> datetime | None:
    # A time without a zone is UTC; one that leaves the calendar in UTC is a bad
    # request here rather than an overflow in the driver.
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is outside the years 1 to 9999 in UTC") from exc


SinceQuery = Annotated[
    datetime | None,
    Query(
        description="a date and time (ISO 8601); without a zone it is UTC; it must lie "
        "within the years 1 to 9999 in UTC",
    ),
    # The document says what _instant_text lets through, not pydantic's wider datetime.
    WithJsonSchema({"type": "string", "pattern": INSTANT}),
    BeforeValidator(_instant_text),
    AfterValidator(_instant),
]
