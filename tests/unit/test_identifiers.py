"""Identifier parsing: every accepted spelling, every refusal and its reason.

Worked examples come from published sources and were each confirmed by
computation before being cited here:

- IMEI 49015420323751 has check digit 8: the worked example of Wikipedia's
  "International Mobile Equipment Identity" article (section "Check digit
  computation").
- MEID hex A10000009296F2 == decimal 270113177609606898, hex check digit F,
  decimal check digit 4, pseudo-ESN 8075B7ED: the example of 3GPP2 X.S0008 as
  used in the test suite of CPAN's Data::MEID (A1000000 hex = 2701131776,
  9296F2 hex = 09606898). The trailing 2 of A10000009296F2 is the last serial
  digit, not a check digit.
- MEID 'AF 01 23 45 0A BC DE C' == '29360 87365 0070 3710 0': the doctest of
  python-stdnum's ``stdnum.meid`` (hex check digit C, decimal check digit 0).
- ESN hex E69FFFFF == decimal 23010485759 (E6 = 230, 9FFFFF = 10485759):
  timgineer.com, "How ESN's work" (2012).
- A pseudo-ESN is 0x80 followed by the low 24 bits of SHA-1 of the MEID, so its
  decimal form begins with 128: Wikipedia, "Electronic serial number".
"""

from __future__ import annotations

import hashlib
import re
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from bridge.errors import InvalidIdentifier
from bridge.identifiers import (
    MAX_LENGTH,
    Kind,
    display,
    kind_name,
    lookalike_key,
    lookalike_substitutions,
    normalize,
    suggestion_ok,
)

HEX_DIGITS = "0123456789ABCDEF"


def reference_luhn(digits: str, base: int) -> int:
    """Luhn check digit, written the textbook way (independent of the module).

    Every second digit from the right, starting with the rightmost, is doubled
    and replaced by the sum of its digits in ``base``; the check digit brings
    the total to a multiple of ``base``.
    """
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = HEX_DIGITS.index(char.upper())
        if position % 2 == 0:
            doubled = value * 2
            value = doubled // base + doubled % base
        total += value
    return -total % base


def meid_check_digit(hex_meid: str) -> str:
    # An all-decimal MEID is an IMEI and carries the IMEI's decimal check digit.
    base = 10 if hex_meid.isdecimal() else 16
    return HEX_DIGITS[reference_luhn(hex_meid, base)]


def reason_of(kind: Kind, text: str, pattern: str | None = None) -> str:
    with pytest.raises(InvalidIdentifier) as caught:
        normalize(kind, text, pattern)
    return caught.value.reason


@st.composite
def sprinkled(draw: st.DrawFn, digits: str, separators: str = " -/.") -> str:
    """``digits`` with separators dropped into random gaps, and random padding."""
    out = []
    for char in digits:
        out.append(char)
        out.append(draw(st.sampled_from(["", "", "", *separators])))
    padding = st.sampled_from(["", " ", "  ", "\t", "\n", "\u00a0"])
    return draw(padding) + "".join(out) + draw(padding)


def any_case(draw: st.DrawFn, text: str) -> str:
    return "".join(c.lower() if draw(st.booleans()) else c.upper() for c in text)


# --- worked examples ---------------------------------------------------------------


def test_imei_worked_example() -> None:
    assert normalize(Kind.IMEI, "49015420323751") == "490154203237518"
    assert normalize(Kind.IMEI, "49-015420-323751-8") == "490154203237518"
    assert normalize(Kind.IMEI, "49 015420 323751 8") == "490154203237518"
    assert normalize(Kind.IMEI, "49/015420/323751/8") == "490154203237518"
    assert normalize(Kind.IMEI, "49.015420.323751.8") == "490154203237518"


def test_meid_worked_example_from_x_s0008() -> None:
    assert int("A1000000", 16) == 2701131776
    assert int("9296F2", 16) == 9606898
    canonical = "A10000009296F2"
    assert normalize(Kind.MEID, "A10000009296F2") == canonical
    assert normalize(Kind.MEID, "a1 00 00 00 92 96 f2") == canonical
    assert normalize(Kind.MEID, "A10000009296F2F") == canonical
    assert normalize(Kind.MEID, "270113177609606898") == canonical
    assert normalize(Kind.MEID, "2701131776 09606898 4") == canonical
    assert "the check digit should be F" in reason_of(Kind.MEID, "A10000009296F22")
    assert "the check digit should be 4" in reason_of(Kind.MEID, "2701131776096068982")


def test_meid_worked_example_from_python_stdnum() -> None:
    assert normalize(Kind.MEID, "AF 01 23 45 0A BC DE C") == "AF0123450ABCDE"
    assert normalize(Kind.MEID, "29360 87365 0070 3710 0") == "AF0123450ABCDE"
    assert "the check digit should be 0" in reason_of(Kind.MEID, "29360 87365 0070 3710 1")


def test_esn_worked_example() -> None:
    assert normalize(Kind.ESN, "E69FFFFF") == "E69FFFFF"
    assert normalize(Kind.ESN, "e6 9f ff ff") == "E69FFFFF"
    assert normalize(Kind.ESN, "23010485759") == "E69FFFFF"
    assert normalize(Kind.ESN, "230 10485759") == "E69FFFFF"


def test_pseudo_esn_of_the_x_s0008_meid() -> None:
    # The pESN is derived here, then read back in both ESN spellings: 0x80 is
    # manufacturer code 128, which is how a pESN's decimal form begins.
    digest = hashlib.sha1(bytes.fromhex("A10000009296F2")).hexdigest()
    pesn = "80" + digest[-6:].upper()
    assert pesn == "8075B7ED"
    decimal = f"{0x80:03d}{0x75B7ED:08d}"
    assert decimal == "12807714797"
    assert normalize(Kind.ESN, decimal) == normalize(Kind.ESN, pesn) == pesn


# --- MAC ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "00:1A:2B:3C:4D:5E",
        "00-1a-2b-3c-4d-5e",
        "001A.2B3C.4D5E",
        "001a2b3c4d5e",
        "001A2B-3C4D5E",
        "00 1A 2B 3C 4D 5E",
        "  00:1a:2B:3c:4D:5e\n",
    ],
)
def test_mac_spellings(spelling: str) -> None:
    assert normalize(Kind.MAC, spelling) == "001A2B3C4D5E"


@st.composite
def mac_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """A random MAC address, and one accepted spelling of it."""
    raw = draw(st.binary(min_size=6, max_size=6))
    canonical = raw.hex().upper()
    width = draw(st.sampled_from([12, 2, 4, 6]))
    separator = draw(st.sampled_from(":-. "))
    groups = [canonical[i : i + width] for i in range(0, 12, width)]
    spelled = any_case(draw, separator.join(groups))
    padding = st.sampled_from(["", " ", "\t", "\r\n", "  "])
    return canonical, draw(padding) + spelled + draw(padding)


@given(mac_spellings())
def test_every_mac_spelling_has_one_canonical_form(case: tuple[str, str]) -> None:
    canonical, spelled = case
    assert normalize(Kind.MAC, spelled) == canonical
    assert normalize(Kind.MAC, canonical) == canonical
    assert display(Kind.MAC, canonical) == ":".join(re.findall("..", canonical))
    assert normalize(Kind.MAC, display(Kind.MAC, canonical)) == canonical


@pytest.mark.parametrize(
    "spelling",
    [
        "00:1A:2B-3C-4D-5E",  # two kinds of separator
        "001:A2B:3C4:D5E",  # groups of 3
        "00:1A2B:3C:4D5E",  # groups of unequal width
        "00::1A:2B:3C:4D5E",  # an empty group
        ":001A2B3C4D5E",  # a separator at an end
        "001A.2B3C-4D5E",  # Cisco layout with a dash
    ],
)
def test_mac_with_mixed_or_misplaced_separators_is_refused(spelling: str) -> None:
    assert "separators are mixed or misplaced" in reason_of(Kind.MAC, spelling)


@given(st.binary(min_size=6, max_size=6), st.sampled_from(":-. "), st.sampled_from(":-. "))
def test_mac_pairs_need_one_kind_of_separator(raw: bytes, first: str, second: str) -> None:
    pairs = re.findall("..", raw.hex())
    spelled = first.join(pairs[:3]) + second + second.join(pairs[3:])
    if first == second:
        assert normalize(Kind.MAC, spelled) == raw.hex().upper()
    else:
        assert "separators are mixed or misplaced" in reason_of(Kind.MAC, spelled)


def test_mac_wrong_length_says_how_many_digits() -> None:
    assert reason_of(Kind.MAC, "00:1A:2B:3C:4D") == "it has 10 hex digits, a MAC address has 12"
    assert (
        reason_of(Kind.MAC, "00:1A:2B:3C:4D:5E:6") == "it has 13 hex digits, a MAC address has 12"
    )
    assert reason_of(Kind.MAC, "0") == "it has 1 hex digit, a MAC address has 12"


def test_mac_non_hex_character_is_named_with_a_hint_but_no_identifier() -> None:
    reason = reason_of(Kind.MAC, "OO:1A:2B:3C:4D:5E")
    assert reason == "it contains 'O', which is not a hex digit (did you mean 0?)"
    assert reason_of(Kind.MAC, "00:1A:2B:3C:4D:5G") == (
        "it contains 'G', which is not a hex digit (did you mean 6?)"
    )
    # No hint when some foreign character is not a look-alike at all.
    assert reason_of(Kind.MAC, "IMEI 00:1A:2B:3C:4D:5E") == (
        "it contains 'I' and 'M', which are not hex digits"
    )
    assert reason_of(Kind.MAC, "00/1A/2B/3C/4D/5E") == (
        "it contains '/', which is neither a hex digit nor a separator ('-', '.', ':' or a space)"
    )


def test_mac_refuses_characters_that_upper_case_into_hex() -> None:
    # str.upper() turns the ligature "ﬀ" into "FF"; it must not pass as hex.
    assert "not a hex digit" in reason_of(Kind.MAC, "00:1A:2B:3C:4D:\ufb00")


# --- IMEI --------------------------------------------------------------------------

imei_bodies = st.text(alphabet="0123456789", min_size=14, max_size=14)


@given(imei_bodies, st.data())
def test_imei_with_and_without_check_digit_agree(body: str, data: st.DataObject) -> None:
    canonical = body + str(reference_luhn(body, 10))
    assert normalize(Kind.IMEI, data.draw(sprinkled(body))) == canonical
    assert normalize(Kind.IMEI, data.draw(sprinkled(canonical))) == canonical
    assert normalize(Kind.IMEI, canonical) == canonical


@given(imei_bodies, st.integers(0, 9))
@example("49015420323751", 7)
def test_imei_wrong_check_digit_says_what_it_should_be(body: str, given_digit: int) -> None:
    right = reference_luhn(body, 10)
    assume(given_digit != right)
    reason = reason_of(Kind.IMEI, body + str(given_digit))
    assert f"the check digit should be {right}, not {given_digit}" in reason


@given(st.text(alphabet="0123456789", min_size=16, max_size=16))
def test_imeisv_is_refused_with_the_imei_it_contains(imeisv: str) -> None:
    reason = reason_of(Kind.IMEI, imeisv)
    imei = imeisv[:14] + str(reference_luhn(imeisv[:14], 10))
    assert "IMEISV" in reason
    assert "software version" in reason
    assert "first 14 digits plus a check digit" in reason
    assert reason.endswith(imei)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("4901542032375", "it has 13 digits, an IMEI has 15 (14 without the check digit)"),
        ("49015420323751890", "it has 17 digits, an IMEI has 15 (14 without the check digit)"),
        ("4901542O323751", "it contains 'O', which is not a digit (did you mean 0?)"),
        ("49O154ZO323751", "it contains 'O' and 'Z', which are not digits (did you mean 0 and 2?)"),
        ("*#06#", "it contains '*' and '#', which are not digits"),
        ("--", "it has 0 digits, an IMEI has 15 (14 without the check digit)"),
    ],
)
def test_imei_refusals(text: str, reason: str) -> None:
    assert reason_of(Kind.IMEI, text) == reason


def test_imei_refuses_digits_of_other_scripts() -> None:
    # int() and str.isdigit() accept Arabic-Indic digits; a canonical IMEI may not.
    arabic_indic = "".join(chr(0x0660 + int(d)) for d in "49015420323751")
    reason = reason_of(Kind.IMEI, arabic_indic)
    assert reason.startswith(f"it contains {arabic_indic[0]!r}, ")
    assert reason.endswith(" and others, which are not digits")


# --- MEID --------------------------------------------------------------------------

meid_values = st.integers(min_value=0, max_value=(1 << 56) - 1)


@given(meid_values, st.data())
def test_meid_hex_and_decimal_spellings_agree(value: int, data: st.DataObject) -> None:
    hex_form = f"{value:014X}"
    decimal_form = f"{value >> 24:010d}{value & 0xFFFFFF:08d}"
    spellings = [
        hex_form,
        hex_form.lower(),
        hex_form + meid_check_digit(hex_form),
        decimal_form,
        decimal_form + str(reference_luhn(decimal_form, 10)),
    ]
    for spelling in spellings:
        assert normalize(Kind.MEID, data.draw(sprinkled(spelling, " -"))) == hex_form
    assert normalize(Kind.MEID, hex_form) == hex_form


@given(imei_bodies)
def test_an_imei_used_as_meid_keeps_the_imei_check_digit(body: str) -> None:
    decimal_check = str(reference_luhn(body, 10))
    assert normalize(Kind.MEID, body + decimal_check) == body
    hex_check = HEX_DIGITS[reference_luhn(body, 16)]
    if hex_check != decimal_check:
        assert f"the check digit should be {decimal_check}" in reason_of(
            Kind.MEID, body + hex_check
        )


@given(st.integers(1 << 32, 9_999_999_999), st.integers(0, 99_999_999))
def test_meid_decimal_manufacturer_code_out_of_range(code: int, serial: int) -> None:
    reason = reason_of(Kind.MEID, f"{code:010d}{serial:08d}")
    assert reason == (
        f"the manufacturer code in its first 10 digits ({code}) is more than "
        "4294967295, the largest 32-bit value"
    )


@given(st.integers(0, (1 << 32) - 1), st.integers(1 << 24, 99_999_999))
def test_meid_decimal_serial_out_of_range(code: int, serial: int) -> None:
    reason = reason_of(Kind.MEID, f"{code:010d}{serial:08d}")
    assert reason == (
        f"the serial number in its last 8 digits ({serial}) is more than "
        "16777215, the largest 24-bit value"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "A10000009296",
            "it has 12 digits, an MEID has 14 hex digits (15 with the check digit) "
            "or 18 decimal digits (19 with the check digit)",
        ),
        (
            "27011317760960689A",
            "it is 18 digits long, like the decimal form, but contains 'A', "
            "which is not a decimal digit",
        ),
        ("0xA10000009296F2", "it starts with '0x': give the hex digits without the prefix"),
        ("A1000000929GF2", "it contains 'G', which is not a hex digit (did you mean 6?)"),
    ],
)
def test_meid_refusals(text: str, reason: str) -> None:
    assert reason_of(Kind.MEID, text) == reason


# --- ESN ---------------------------------------------------------------------------


@given(st.integers(0, (1 << 32) - 1), st.data())
def test_esn_hex_and_decimal_spellings_agree(value: int, data: st.DataObject) -> None:
    hex_form = f"{value:08X}"
    decimal_form = f"{value >> 24:03d}{value & 0xFFFFFF:08d}"
    assert normalize(Kind.ESN, data.draw(sprinkled(hex_form.lower(), " -"))) == hex_form
    assert normalize(Kind.ESN, data.draw(sprinkled(decimal_form, " -"))) == hex_form
    assert normalize(Kind.ESN, hex_form) == hex_form


@given(st.integers(256, 999), st.integers(0, 99_999_999))
def test_esn_manufacturer_code_out_of_range(code: int, serial: int) -> None:
    assert reason_of(Kind.ESN, f"{code:03d}{serial:08d}") == (
        f"the manufacturer code in its first 3 digits ({code}) is more than 255, "
        "the largest 8-bit value"
    )


@given(st.integers(0, 255), st.integers(1 << 24, 99_999_999))
def test_esn_serial_out_of_range(code: int, serial: int) -> None:
    assert reason_of(Kind.ESN, f"{code:03d}{serial:08d}") == (
        f"the serial number in its last 8 digits ({serial}) is more than 16777215, "
        "the largest 24-bit value"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("E69FFF", "it has 6 digits, an ESN has 8 hex digits or 11 decimal digits"),
        ("0x8000000B", "it starts with '0x': give the hex digits without the prefix"),
        (
            "2301048575F",
            "it is 11 digits long, like the decimal form, but contains 'F', "
            "which is not a decimal digit",
        ),
    ],
)
def test_esn_refusals(text: str, reason: str) -> None:
    assert reason_of(Kind.ESN, text) == reason


# --- serial ------------------------------------------------------------------------


def test_serial_is_trimmed_and_upper_cased() -> None:
    assert normalize(Kind.SERIAL, "  th-12ab-x9 \n") == "TH-12AB-X9"
    assert normalize(Kind.SERIAL, "sn 0042") == "SN 0042"


def test_serial_pattern_matches_the_whole_canonical_form() -> None:
    pattern = r"TH-\d{6}"
    assert normalize(Kind.SERIAL, " th-123456 ", pattern) == "TH-123456"
    assert reason_of(Kind.SERIAL, "TH-1234567", pattern) == (
        r"it does not match the model's pattern 'TH-\d{6}'"
    )
    assert reason_of(Kind.SERIAL, "XTH-123456", pattern).endswith(r"'TH-\d{6}'")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ("   \t ", "it is empty"),
        ("AB\x00CD", "it contains the invisible or control character U+0000"),
        ("AB\tCD", "it contains the invisible or control character U+0009"),
        ("AB\u200bCD", "it contains the invisible or control character U+200B"),
        ("AB\u2028CD", "it contains the invisible or control character U+2028"),
        (
            "\u00df" * 40,
            "upper-cased it is 80 characters long, and an identifier has at most 64",
        ),
    ],
)
def test_serial_refusals(text: str, reason: str) -> None:
    assert reason_of(Kind.SERIAL, text) == reason


# --- every kind --------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_over_64_characters_is_refused_for_every_kind(kind: Kind) -> None:
    text = "1" * (MAX_LENGTH + 1)
    with pytest.raises(InvalidIdentifier) as caught:
        normalize(kind, text)
    assert caught.value.reason == "it is 65 characters long, and an identifier has at most 64"
    # A long paste is quoted only in part, so the message stays one sentence.
    assert len(caught.value.message) < 200


def test_64_characters_is_still_accepted() -> None:
    assert normalize(Kind.SERIAL, "a" * MAX_LENGTH) == "A" * MAX_LENGTH


@pytest.mark.parametrize("kind", list(Kind))
def test_empty_is_refused_for_every_kind(kind: Kind) -> None:
    assert reason_of(kind, " ") == "it is empty"


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="phone"):
        normalize("phone", "123")


kinds = st.sampled_from(list(Kind))
identifier_like = st.text(alphabet="0123456789abcdefABCDEF:-. /OISBZGLx", max_size=24)


@given(kinds, st.one_of(st.text(max_size=80), identifier_like))
@example(Kind.SERIAL, "\u00df" * 32)
@example(Kind.MAC, "00:1a:2b:3c:4d:\ufb00")
def test_any_text_normalizes_or_is_refused_and_canonical_forms_round_trip(
    kind: Kind, text: str
) -> None:
    refusal: InvalidIdentifier | None = None
    canonical = ""
    try:
        canonical = normalize(kind, text)
    except InvalidIdentifier as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.kind == kind
        assert refusal.reason
        assert not refusal.reason.endswith(".")  # the message adds the full stop
        return
    assert normalize(kind, canonical) == canonical
    assert lookalike_key(kind, canonical) == lookalike_key(kind, text) or kind in (
        Kind.IMEI,  # 14 digits gain a check digit
        Kind.MEID,  # decimal forms become hex; check digits are dropped
        Kind.ESN,
    )


@given(st.text(max_size=30))
def test_serial_pattern_never_lets_other_errors_through(text: str) -> None:
    try:
        canonical = normalize(Kind.SERIAL, text, r"[A-Z0-9-]{3,20}")
    except InvalidIdentifier:
        return
    assert re.fullmatch(r"[A-Z0-9-]{3,20}", canonical)


# --- messages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (
            Kind.MAC,
            "00:1A:2B:3C:4D",
            "The MAC address '00:1A:2B:3C:4D' is not valid: "
            "it has 10 hex digits, a MAC address has 12.",
        ),
        (
            Kind.IMEI,
            "490154203237517",
            "The IMEI '490154203237517' is not valid: "
            "the check digit should be 8, not 7, so a digit is probably mistyped.",
        ),
        (
            Kind.MEID,
            "A1000000",
            "The MEID 'A1000000' is not valid: it has 8 digits, an MEID has 14 hex digits "
            "(15 with the check digit) or 18 decimal digits (19 with the check digit).",
        ),
        (
            Kind.ESN,
            "E69FFFFFF",
            "The ESN 'E69FFFFFF' is not valid: "
            "it has 9 digits, an ESN has 8 hex digits or 11 decimal digits.",
        ),
        (Kind.SERIAL, "  ", "The serial number '  ' is not valid: it is empty."),
    ],
)
def test_messages_name_the_kind_and_quote_the_input(kind: Kind, text: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalize(kind, text)
    assert caught.value.code == "invalid_identifier"
    assert caught.value.kind == kind
    assert caught.value.presented == text
    assert str(caught.value) == message


def test_kind_names() -> None:
    assert [kind_name(kind) for kind in Kind] == [
        "MAC address",
        "IMEI",
        "MEID",
        "ESN",
        "serial number",
    ]
    assert kind_name("mac") == "MAC address"
    assert kind_name("telex") == "telex"


def test_display() -> None:
    assert display(Kind.MAC, "001A2B3C4D5E") == "00:1A:2B:3C:4D:5E"
    assert display("imei", "490154203237518") == "490154203237518"
    assert display(Kind.MEID, "A10000009296F2") == "A10000009296F2"
    assert display(Kind.ESN, "E69FFFFF") == "E69FFFFF"
    assert display(Kind.SERIAL, "TH-12AB") == "TH-12AB"


# --- look-alikes -------------------------------------------------------------------

# How a sticker is misread: each character and what it may be taken for.
MISREADINGS = {
    "0": "Oo",
    "O": "0",
    "1": "IiLl",
    "I": "1Ll",
    "L": "1Ii",
    "5": "Ss",
    "S": "5",
    "8": "Bb",
    "B": "8",
    "2": "Zz",
    "Z": "2",
    "6": "Gg",
    "G": "6",
}


@st.composite
def misread(draw: st.DrawFn, canonical: str) -> tuple[str, int]:
    """``canonical`` with some look-alike characters misread; how many changed."""
    out = []
    changed = 0
    for char in canonical:
        if char in MISREADINGS and draw(st.booleans()):
            out.append(draw(st.sampled_from(MISREADINGS[char])))
            changed += 1
        else:
            out.append(char)
    return "".join(out), changed


@given(st.binary(min_size=6, max_size=6), st.data())
def test_misread_mac_folds_to_the_key_of_its_canonical_form(
    raw: bytes, data: st.DataObject
) -> None:
    canonical = raw.hex().upper()
    typed, changed = data.draw(misread(canonical))
    spelled = ":".join(re.findall("..", typed))
    assert lookalike_key(Kind.MAC, spelled) == lookalike_key(Kind.MAC, canonical)
    assert lookalike_substitutions(spelled, canonical) == changed
    assert suggestion_ok(spelled, canonical) == (1 <= changed <= 2)


@given(
    st.text(alphabet=string.digits + string.ascii_uppercase + "-", min_size=1, max_size=20),
    st.data(),
)
def test_misread_serial_folds_to_the_key_of_its_canonical_form(
    canonical: str, data: st.DataObject
) -> None:
    typed, changed = data.draw(misread(canonical))
    assert lookalike_key(Kind.SERIAL, typed) == lookalike_key(Kind.SERIAL, canonical)
    assert lookalike_substitutions(typed, canonical) == changed


def test_lookalike_examples() -> None:
    assert lookalike_key(Kind.MAC, "OO:1A:2B:3C:4D:5E") == lookalike_key(Kind.MAC, "001A2B3C4D5E")
    assert lookalike_key(Kind.SERIAL, " th-sb0l ") == "TH5801"
    assert lookalike_substitutions("OO:1A:2B:3C:4D:5E", "001A2B3C4D5E") == 2
    assert lookalike_substitutions("001A2B3C4D5E", "001A2B3C4D5E") == 0
    assert lookalike_substitutions("I", "L") == 1  # both are read as 1
    # A difference that is not a look-alike pair, or another length: no count.
    assert lookalike_substitutions("001A2B3C4D5F", "001A2B3C4D5E") is None
    assert lookalike_substitutions("O01A2B3C4D5F", "001A2B3C4D5E") is None
    assert lookalike_substitutions("001A2B3C4D5", "001A2B3C4D5E") is None


def test_suggestions_only_for_one_or_two_misread_characters() -> None:
    canonical = "TH-5801-26"
    assert not suggestion_ok("TH-5801-26", canonical)  # the same: nothing to suggest
    assert suggestion_ok("TH-S801-26", canonical)
    assert suggestion_ok("TH-S8O1-26", canonical)
    assert not suggestion_ok("TH-S8OI-26", canonical)  # three: likely another device
    assert not suggestion_ok("TH-5801-27", canonical)  # 7 is not a look-alike of 6
