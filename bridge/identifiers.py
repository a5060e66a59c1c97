"""Parse, normalize and validate device identifiers. Pure: no I/O.

One job: turn the number printed on a device's sticker, as a person or a device
typed it, into the one canonical form the database stores (protocol v1,
"Identifiers"), or say in one clause why it cannot be a number of that kind:

=========  ====================================  ==================================
kind       accepted spellings                    canonical form
=========  ====================================  ==================================
``mac``    ``00:1A:2B:3C:4D:5E``, ``00-1a-...``,  12 upper-case hex digits
           ``001A.2B3C.4D5E``, ``001a2b3c4d5e``
``imei``   15 digits (Luhn), or 14 (check digit  15 digits
           computed); spaces - / . ignored
``meid``   14 hex digits (+ check digit), or 18  14 upper-case hex digits
           decimal digits (+ check digit)
``esn``    8 hex digits, or 11 decimal digits    8 upper-case hex digits
``serial`` anything printable; the model's regex  trimmed and upper-cased
=========  ====================================  ==================================

A model's serial pattern is matched with RE2 (:func:`check_pattern`), which runs
in time linear in the identifier whatever the pattern: a vendor's pattern runs
on anonymous device input in the event loop, and a backtracking engine lets
``(A+)+B`` take seconds on 30 characters.

It also folds look-alike characters (O/0, I/L/1, S/5, B/8, Z/2, G/6) so the claim
step can find "did you mean ...?" candidates through an indexed column.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Final, Protocol

import re2

from bridge.errors import InvalidIdentifier, Malformed
from bridge.text import IDENTIFIER_MAX, first_invisible

#: The protocol caps the ``identifier`` field at 64 characters (:mod:`bridge.text`).
#: The parser applies the cap, not only the payload check, so that the MQTT door and
#: the owner-side door (claim, approve) accept exactly the same values.
MAX_LENGTH: Final = IDENTIFIER_MAX

#: The claim step suggests an approved identifier only when the typed value
#: differs from it in this many look-alike positions at most: more than that is
#: more likely a different device than a misread sticker.
MAX_SUGGESTED_SUBSTITUTIONS: Final = 2

#: A serial pattern is at most this many characters long.
MAX_PATTERN_LENGTH: Final = 256

#: RE2's compiled size of a pattern, in instructions, at most. Matching costs
#: at most (identifier length x program size) steps, and compiling happens once per
#: pattern and process, in the event loop, so this bounds both (the measured times
#: are in docs/performance.md). ``\p{L}`` alone is 1,201 steps; ``SN-[0-9]{8}`` is 16.
MAX_PATTERN_PROGRAM: Final = 2_000

# RE2's memory budget per pattern (program and DFA cache). The DFA cache is
# thrown away and rebuilt when full, and a smaller cache rebuilds faster than
# RE2's default of 8 MiB (docs/performance.md).
_PATTERN_MEMORY: Final = 256 * 1024

log = logging.getLogger("bridge.identifiers")


class Kind(StrEnum):
    MAC = "mac"
    IMEI = "imei"
    MEID = "meid"
    ESN = "esn"
    SERIAL = "serial"


_NAMES: Final = {
    Kind.MAC: "MAC address",
    Kind.IMEI: "IMEI",
    Kind.MEID: "MEID",
    Kind.ESN: "ESN",
    Kind.SERIAL: "serial number",
}


def kind_name(kind: str) -> str:
    """The kind as people say it: "MAC address", "IMEI", "serial number"..."""
    try:
        return _NAMES[Kind(kind)]
    except ValueError:
        # Used while building error messages: an unknown kind must not turn one
        # error into another, so it is named as given.
        return kind


# Character sets are spelled out in ASCII on purpose: str.isdigit() accepts "²"
# and int() accepts Arabic-Indic digits, and str.upper() turns the ligature "ﬀ"
# into "FF"; none of those may sneak into a canonical identifier.
_DECIMAL: Final = frozenset("0123456789")
_HEX: Final = frozenset("0123456789ABCDEFabcdef")
_HEX_UPPER: Final = "0123456789ABCDEF"

# MAC addresses are written with one of these between groups (a space is how
# some labels print them).
_MAC_SEPARATORS: Final = frozenset(":-. ")
_H: Final = "[0-9A-Fa-f]"
# Twelve hex digits alone, or in equal groups of 2 (00:1A:...), 4 (Cisco's
# 001A.2B3C.4D5E) or 6 (001A2B-3C4D5E) with one separator used throughout.
# Anything else ("00:1A:2B-3C-4D-5E", "001:A2B:...") is refused: separators in
# odd places suggest the digits were copied from something else, and an
# identifier that unlocks a key is worth one more look.
_MAC_LAYOUT: Final = re.compile(
    rf"{_H}{{12}}"
    rf"|{_H}{{2}}(?P<pair>[:\-. ])(?:{_H}{{2}}(?P=pair)){{4}}{_H}{{2}}"
    rf"|{_H}{{4}}(?P<quad>[:\-. ]){_H}{{4}}(?P=quad){_H}{{4}}"
    rf"|{_H}{{6}}[:\-. ]{_H}{{6}}"
)

# Numbers printed in digit groups (IMEI, MEID, ESN) are written with spaces,
# dashes, slashes or dots between the groups; where they go carries no meaning.
_DIGIT_SEPARATORS: Final = frozenset("-/.")


# Sticker misreadings, letter -> the digit it is mistaken for (and back).
_FOLD: Final = {"O": "0", "I": "1", "L": "1", "S": "5", "B": "8", "Z": "2", "G": "6"}
_FOLD_TABLE: Final = str.maketrans(_FOLD)
# What lookalike_key ignores: every separator the numeric kinds accept, so a
# typed value and its canonical form meet whatever was put between the groups.
_LOOKALIKE_SEPARATORS: Final = frozenset(":-./")


class _Refused(Exception):
    """A parser's refusal; ``normalize`` turns it into InvalidIdentifier."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalize(kind: Kind | str, text: str, pattern: str | None = None) -> str:
    """Return the canonical form of ``text`` for ``kind`` or raise InvalidIdentifier.

    ``pattern`` is the model's regular expression for serial numbers (other
    kinds ignore it); it must match the whole canonical (upper-cased) value.
    An unknown ``kind`` raises ValueError (a programming error); any ``text``
    at all either normalizes or raises InvalidIdentifier. Over 64 characters,
    the error's ``presented`` is the input's first 64 characters and "…".
    """
    kind = Kind(kind)
    if len(text) > MAX_LENGTH:
        # The message quotes the input; a long paste would drown the one
        # sentence the requester reads, so only its start is quoted.
        raise InvalidIdentifier(
            kind,
            text[:MAX_LENGTH] + "…",
            f"it is {len(text)} characters long, and an identifier has at most {MAX_LENGTH}",
        )
    try:
        return _parse(kind, text, pattern)
    except _Refused as refusal:
        raise InvalidIdentifier(kind, text, refusal.reason) from None


def _parse(kind: Kind, text: str, pattern: str | None) -> str:
    stripped = text.strip()
    if not stripped:
        raise _Refused("it is empty")
    # Characters that cannot be seen or typed on purpose arrive by copy-and-paste
    # accident and would make two identical-looking identifiers differ.
    invisible = first_invisible(stripped)
    if invisible is not None:
        raise _Refused(f"it contains the invisible or control character U+{ord(invisible):04X}")
    if kind is Kind.MAC:
        return _parse_mac(stripped)
    if kind is Kind.IMEI:
        return _parse_imei(stripped)
    if kind is Kind.MEID:
        return _parse_meid(stripped)
    if kind is Kind.ESN:
        return _parse_esn(stripped)
    return _parse_serial(stripped, pattern)


def _parse_mac(text: str) -> str:
    _refuse_foreign(text, _HEX, "hex digit", separators=_MAC_SEPARATORS)
    digits = "".join(char for char in text if char not in _MAC_SEPARATORS)
    if len(digits) != 12:
        raise _Refused(f"it has {_count(len(digits), 'hex digit')}, a MAC address has 12")
    if not _MAC_LAYOUT.fullmatch(text):
        raise _Refused(
            "its separators are mixed or misplaced: write the 12 hex digits alone, "
            "or in equal groups of 2, 4 or 6 with one kind of separator"
        )
    return digits.upper()


def _parse_imei(text: str) -> str:
    digits = _squash(text)
    _refuse_foreign(digits, _DECIMAL, "digit")
    if len(digits) == 14:
        # Many labels and databases leave the check digit off; it carries no
        # information, so it is computed rather than demanded.
        return digits + _HEX_UPPER[_luhn(digits, 10)]
    if len(digits) == 15:
        _check_digit(digits[-1], _HEX_UPPER[_luhn(digits[:14], 10)])
        return digits
    if len(digits) == 16:
        # *#06# shows the IMEISV on many phones; it is the one number people
        # most often paste by mistake, so the reason tells them what to do.
        imei = digits[:14] + _HEX_UPPER[_luhn(digits[:14], 10)]
        raise _Refused(
            "it has 16 digits, so it is an IMEISV (the IMEI with a software version "
            "number), not an IMEI; the IMEI is its first 14 digits plus a check digit: "
            f"{imei}"
        )
    raise _Refused(
        f"it has {_count(len(digits), 'digit')}, an IMEI has 15 (14 without the check digit)"
    )


def _parse_meid(text: str) -> str:
    digits = _squash(text)
    _refuse_hex_prefix(digits)
    _refuse_foreign(digits, _HEX, "hex digit")
    if len(digits) in (14, 15):
        body = digits[:14].upper()
        if len(digits) == 15:
            _check_digit(digits[14].upper(), _meid_check_digit(body))
        return body
    if len(digits) in (18, 19):
        _refuse_foreign(
            digits,
            _DECIMAL,
            "decimal digit",
            lead=f"it is {len(digits)} digits long, like the decimal form, but contains",
        )
        body = digits[:18]
        if len(digits) == 19:
            _check_digit(digits[18], _HEX_UPPER[_luhn(body, 10)])
        # The decimal form writes the same 56 bits as two decimal numbers: the
        # first 32 bits (regional + manufacturer code) and the last 24 (serial).
        return _decimal_to_hex(body, ((10, 32, "manufacturer code"), (8, 24, "serial number")))
    raise _Refused(
        f"it has {_count(len(digits), 'digit')}, an MEID has 14 hex digits (15 with the "
        "check digit) or 18 decimal digits (19 with the check digit)"
    )


def _parse_esn(text: str) -> str:
    digits = _squash(text)
    _refuse_hex_prefix(digits)
    _refuse_foreign(digits, _HEX, "hex digit")
    if len(digits) == 8:
        return digits.upper()
    if len(digits) == 11:
        _refuse_foreign(
            digits,
            _DECIMAL,
            "decimal digit",
            lead="it is 11 digits long, like the decimal form, but contains",
        )
        # 3 decimal digits for the 8-bit manufacturer code, 8 for the 24-bit serial.
        return _decimal_to_hex(digits, ((3, 8, "manufacturer code"), (8, 24, "serial number")))
    raise _Refused(
        f"it has {_count(len(digits), 'digit')}, an ESN has 8 hex digits or 11 decimal digits"
    )


def _parse_serial(text: str, pattern: str | None) -> str:
    value = text.upper()
    if len(value) > MAX_LENGTH:
        # A few letters grow when upper-cased ("ß" -> "SS"); the canonical form
        # must itself be a valid identifier, or it could not be typed back.
        raise _Refused(
            f"upper-cased it is {len(value)} characters long, "
            f"and an identifier has at most {MAX_LENGTH}"
        )
    if pattern is None:
        return value
    compiled = _compiled(pattern)
    if isinstance(compiled, str):
        # Only a model stored before patterns were checked with RE2 gets here
        # (check_pattern refuses it at creation); its numbers cannot be told
        # apart from bad ones, so none matches, and the error is logged once.
        if pattern not in _reported:
            _reported.add(pattern)
            log.error(
                "a model's serial pattern %r cannot be used (%s); serial numbers of its "
                "model are refused until the pattern is replaced",
                pattern,
                compiled,
                extra={"event": "pattern_unusable"},
            )
        raise _Refused(
            "it cannot be checked, because this bridge no longer accepts the model's "
            "pattern; the vendor must replace the pattern"
        )
    if compiled.fullmatch(value) is None:
        raise _Refused(f"it does not match the model's pattern '{pattern}'")
    return value


class _Pattern(Protocol):
    """The part of an RE2 compiled pattern used here (google-re2 ships no types)."""

    def fullmatch(self, text: str) -> object | None: ...


def check_pattern(pattern: str) -> None:
    """Raise Malformed, in one sentence, if ``pattern`` cannot be a model's serial pattern.

    Patterns are RE2 syntax (like Python's ``re``, without backreferences,
    lookaround or possessive quantifiers), at most 256 characters and 2,000
    compiled steps, so that no pattern can make matching slow.
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise Malformed(
            f"The pattern is {len(pattern)} characters long; a pattern has at most "
            f"{MAX_PATTERN_LENGTH}."
        )
    compiled = _compiled(pattern)
    if isinstance(compiled, str):
        raise Malformed(f"The pattern {pattern!r} is not accepted: {compiled}.")


def unusable_pattern(pattern: str) -> str | None:
    """Why a stored ``pattern`` cannot be used (a clause), or None if it can."""
    compiled = _compiled(pattern)
    return compiled if isinstance(compiled, str) else None


# Stored patterns already logged as unusable: a handful at most, since
# check_pattern keeps new ones out.
_reported: set[str] = set()


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> _Pattern | str:
    """The compiled pattern, or why it cannot be used; compiled once per process."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"it is longer than {MAX_PATTERN_LENGTH} characters"
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refusal on stderr
    options.max_mem = _PATTERN_MEMORY
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if exc.args else "not understood"
        if detail.startswith("pattern too large"):
            return _too_large(None)
        return (
            f"{detail} (patterns are RE2 syntax, which matches in linear time and so "
            "has no backreferences, lookaround or possessive quantifiers)"
        )
    except UnicodeEncodeError:
        return "it contains a character that is not valid Unicode (a lone surrogate)"
    size: int = compiled.programsize
    if size > MAX_PATTERN_PROGRAM:
        return _too_large(size)
    checked: _Pattern = compiled
    return checked


def _too_large(size: int | None) -> str:
    steps = f"{size:,} steps" if size is not None else "too many steps"
    return (
        f"it compiles to {steps}, and a pattern may have at most {MAX_PATTERN_PROGRAM:,} "
        "(large counted repetitions and Unicode classes such as \\p{L} cost the most)"
    )


def _squash(text: str) -> str:
    return "".join(char for char in text if not (char.isspace() or char in _DIGIT_SEPARATORS))


def _refuse_foreign(
    text: str,
    allowed: frozenset[str],
    digit: str,
    *,
    separators: frozenset[str] = frozenset(),
    lead: str = "it contains",
) -> None:
    """Refuse ``text`` if it has characters outside ``allowed`` and ``separators``.

    The reason names the characters, and when every one of them is a letter
    that looks like a digit it says which digit was probably meant. It never
    proposes a whole identifier: this step does not know which ones exist.
    """
    foreign = list(dict.fromkeys(c for c in text if c not in allowed and c not in separators))
    if not foreign:
        return
    shown = [repr(c) for c in foreign[:3]]
    quoted = _join(shown) if len(foreign) <= 3 else ", ".join(shown) + " and others"
    one = len(foreign) == 1
    if separators and not any(c.isalnum() for c in foreign):
        # Punctuation in a MAC address: a separator we do not take, so the
        # reason lists the ones we do.
        listed = _join([*(repr(s) for s in sorted(separators) if s != " "), "a space"], "or")
        which = (
            f"which is neither a {digit} nor a separator ({listed})"
            if one
            else f"which are neither {digit}s nor separators ({listed})"
        )
    else:
        which = f"which is not a {digit}" if one else f"which are not {digit}s"
    reason = f"{lead} {quoted}, {which}"
    if all(c.upper() in _FOLD for c in foreign):
        reason += f" (did you mean {_join(_FOLD[c.upper()] for c in foreign[:3])}?)"
    raise _Refused(reason)


def _refuse_hex_prefix(digits: str) -> None:
    # "0x8000000B" is how programmers write an ESN; the prefix is not part of it.
    if digits[:2] in ("0x", "0X"):
        raise _Refused("it starts with '0x': give the hex digits without the prefix")


def _check_digit(given: str, expected: str) -> None:
    if given != expected:
        # Whichever digit is wrong, the check digit computed from the others
        # disagrees; saying so (rather than "the last digit is wrong") keeps the
        # person from "fixing" the one digit that may well be right.
        raise _Refused(
            f"the check digit should be {expected}, not {given}, so a digit is probably mistyped"
        )


def _luhn(digits: str, base: int) -> int:
    """The Luhn check digit of ``digits`` in ``base`` (10, or 16 for MEIDs).

    Base 16 is the MEID variant (3GPP2 S.R0048; the tests check it against the
    published X.S0008 example): every second digit from the right is doubled,
    and a doubled value of 16 or more contributes the sum of its two hex digits
    (value - 15), just as decimal Luhn uses value - 9.
    """
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = _HEX_UPPER.index(char.upper())
        if position % 2 == 0:
            value *= 2
            if value >= base:
                value -= base - 1
        total += value
    return (base - total % base) % base


def _meid_check_digit(body: str) -> str:
    # An MEID made only of decimal digits is an IMEI (the two share one number
    # space, and every IMEI may serve as an MEID); the check digit printed with
    # it is the IMEI's decimal Luhn digit, not the hex one.
    if all(char in _DECIMAL for char in body):
        return _HEX_UPPER[_luhn(body, 10)]
    return _HEX_UPPER[_luhn(body, 16)]


def _decimal_to_hex(digits: str, fields: tuple[tuple[int, int, str], ...]) -> str:
    """Convert a decimal-form identifier, field by field, to its hex form.

    Each field is (decimal width, bit width, name); a field whose decimal value
    does not fit its bits cannot come from any device, so it is refused rather
    than wrapped around.
    """
    out: list[str] = []
    start = 0
    for index, (width, bits, name) in enumerate(fields):
        chunk = digits[start : start + width]
        start += width
        value = int(chunk)
        largest = (1 << bits) - 1
        if value > largest:
            place = "first" if index == 0 else "last"
            raise _Refused(
                f"the {name} in its {place} {width} digits ({chunk}) is more than "
                f"{largest}, the largest {bits}-bit value"
            )
        out.append(f"{value:0{bits // 4}X}")
    return "".join(out)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _join(items: Iterable[str], conjunction: str = "and") -> str:
    words = list(items)
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def _lookalike_layout(text: str) -> str:
    # The separator-free, upper-cased layout in which look-alikes are compared.
    return "".join(
        char for char in text if not (char.isspace() or char in _LOOKALIKE_SEPARATORS)
    ).upper()


def lookalike_key(kind: Kind | str, text: str) -> str:
    """Fold look-alike characters so that sticker misreadings share one key.

    The database keeps ``lookalike_key(kind, canonical)`` for every approved
    identifier; a typed value that misreads the canonical form in the same
    separator-free layout (``OO:1A:...`` for ``001A...``) folds to the same key.
    ``text`` need not be valid: invalid input is exactly what this is for.
    """
    Kind(kind)  # an unknown kind is a programming error, as in normalize
    return _lookalike_layout(text).translate(_FOLD_TABLE)


def lookalike_substitutions(a: str, b: str) -> int | None:
    """How many positions of ``a`` and ``b`` hold two look-alike characters.

    Both are compared separator-free and upper-cased. None when their lengths
    differ or any differing position is not a look-alike pair (O/0, I/L/1, S/5,
    B/8, Z/2, G/6); 0 when they are the same.
    """
    left, right = _lookalike_layout(a), _lookalike_layout(b)
    if len(left) != len(right):
        return None
    substitutions = 0
    for x, y in zip(left, right, strict=True):
        if x == y:
            continue
        if _FOLD.get(x, x) != _FOLD.get(y, y):
            return None
        substitutions += 1
    return substitutions


def suggestion_ok(typed: str, candidate: str) -> bool:
    """Whether the claim step may offer ``candidate`` as "did you mean ...?".

    Only a misreading of one or two characters qualifies: an exact match needs
    no suggestion, and more substitutions point at a different device.
    """
    substitutions = lookalike_substitutions(typed, candidate)
    return substitutions is not None and 1 <= substitutions <= MAX_SUGGESTED_SUBSTITUTIONS


def display(kind: Kind | str, canonical: str) -> str:
    """The canonical value the way people read it (MAC with colons)."""
    if Kind(kind) is Kind.MAC:
        return ":".join(canonical[i : i + 2] for i in range(0, len(canonical), 2))
    return canonical
