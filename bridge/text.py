"""What text the bridge accepts from outside: printable text, visible names, their limits.

One definition each, used by every door (MQTT requests, the HTTP API, the command
line, API tokens, settings). Pure, no I/O.

Two tiers:

- **printable**: no control character (C0, DEL, C1) and no lone surrogate. Every
  piece of outside text must be printable: PostgreSQL text cannot hold NUL, a lone
  surrogate cannot be encoded as UTF-8 at all (either would fail deep in the driver),
  and the other control characters have no place in a name or a number and would
  reach the audit log and terminals. A refusal is a bad request (``malformed``).
- **visible**: printable, and no invisible character either: format characters
  (right-to-left overrides, which display a name reversed; zero-width spaces),
  private-use and unassigned code points, line and paragraph separators. Identifiers
  and new vendor and model names must be visible: they arrive by copy-and-paste, and
  two that look identical must not differ.

Limits (characters, not bytes): vendor and model names :data:`NAME_MAX`, identifiers
:data:`IDENTIFIER_MAX`, names of people (owners, token subjects) :data:`PERSON_MAX`,
MQTT client ids :data:`CLIENT_ID_MAX`, request ids :data:`REQUEST_ID_MAX`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from bridge.errors import Malformed

#: Vendor and model names (protocol v1 ``vendor`` and ``model``; HTTP path segments).
NAME_MAX: Final = 64
#: Identifiers as presented (sticker numbers, serials), and their canonical forms.
IDENTIFIER_MAX: Final = 64
#: Owner names, and the subject a token speaks for.
PERSON_MAX: Final = 128
#: MQTT client ids (protocol v1; also the device's broker username).
CLIENT_ID_MAX: Final = 128
#: Request ids (protocol v1).
REQUEST_ID_MAX: Final = 64
#: The MQTT shared-subscription group of the bridges (BRIDGE_SHARE_GROUP).
SHARE_GROUP_MAX: Final = 64

#: The characters of client ids, request ids and share groups: safe in a topic level,
#: a broker username and a log line as they are.
PLAIN_CHARS: Final = "A-Za-z0-9._:-"

#: Control characters (C0, DEL, C1) and lone surrogates.
UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: :data:`UNPRINTABLE` for a JSON Schema (ECMA-262 syntax): the schema cannot name lone
#: surrogates, which no UTF-8 payload can carry unescaped anyway.
PRINTABLE_PATTERN: Final = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"

#: Unicode categories of invisible characters: control, format (bidi overrides,
#: zero-width space), surrogate, private use, unassigned, line and paragraph separator.
INVISIBLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def plain(max_length: int) -> re.Pattern[str]:
    """A pattern for 1 to ``max_length`` characters of :data:`PLAIN_CHARS` (fullmatch it)."""
    return re.compile(f"[{PLAIN_CHARS}]{{1,{max_length}}}")


def is_printable(value: str) -> bool:
    return UNPRINTABLE.search(value) is None


def printable(value: str) -> str:
    """``value`` if it is printable; else ValueError (a pydantic ``AfterValidator``)."""
    if not is_printable(value):
        raise ValueError("must not contain control characters")
    return value


def is_person_name(value: str) -> bool:
    """An owner's or a token subject's name: 1 to :data:`PERSON_MAX` printable characters."""
    return 1 <= len(value) <= PERSON_MAX and is_printable(value)


def first_invisible(value: str, *, spaces: bool = False) -> str | None:
    """The first invisible character of ``value``, or None.

    With ``spaces``, any space other than U+0020 counts too (no-break, ideographic,
    thin...): a name typed by people shows one kind of space.
    """
    for char in value:
        category = unicodedata.category(char)
        if category in INVISIBLE_CATEGORIES or (spaces and category == "Zs" and char != " "):
            return char
    return None


#: A reason recorded with a lifecycle change (shown in the owner's history).
REASON_MAX: Final = 500
#: A model's support contact (shown to owners beside refusals).
CONTACT_MAX: Final = 200


def check_text(label: str, value: str, limit: int, *, spaces: bool) -> None:
    """Free text shown to people (a reason, an actor, a contact): 1 to ``limit``
    characters, not only spaces, nothing invisible; else Malformed in one sentence.

    Shown in the owner's history, the audit log and terminals: a right-to-left override
    would display it reversed, and NUL and lone surrogates cannot even be stored.
    ``spaces``: a name typed by people shows one kind of space.
    """
    if not 1 <= len(value) <= limit or not value.strip():
        raise Malformed(f"The {label} must be 1 to {limit} characters, not only spaces.")
    bad = first_invisible(value, spaces=spaces)
    if bad is not None:
        raise Malformed(
            f"The {label} contains the invisible or control character U+{ord(bad):04X}; "
            "use printable characters."
        )


def check_name(label: str, value: str) -> None:
    """A new vendor or model name must be addressable and display as it is stored.

    A name is a path segment of the HTTP API (no "/", not "." or ".."), is shown on
    the owner page, in the audit log and in terminals (visible, with plain spaces:
    a right-to-left override would display it reversed), and is typed by people (no
    leading or trailing space). Names registered before this rule keep working.
    ``label`` is "vendor" or "model"; a refusal is Malformed with one sentence.
    """
    if not 1 <= len(value) <= NAME_MAX:
        raise Malformed(f"The {label} name must be 1 to {NAME_MAX} characters.")
    if "/" in value or value in {".", ".."}:
        raise Malformed(f"The {label} name {value!r} cannot contain '/' or be '.' or '..'.")
    if value != value.strip():
        raise Malformed(f"The {label} name {value!r} must not start or end with a space.")
    bad = first_invisible(value, spaces=True)
    if bad is not None:
        raise Malformed(
            f"The {label} name contains the invisible or control character U+{ord(bad):04X}; "
            "use printable characters."
        )
