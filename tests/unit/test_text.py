"""One definition of printable text and of name limits, at every door (bridge.text)."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge import identifiers, protocol, text, tokens
from bridge.config import Settings
from bridge.errors import InvalidIdentifier, Malformed
from bridge.records import ApiToken

NUL = "\x00"
ESC = "\x1b"
DEL = "\x7f"
C1_CSI = "\x9b"  # a one-byte terminal escape in 8-bit terminals
LONE_SURROGATE = "\ud800"
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "acme\u202eoc" displays as "acmeco" reversed
ZWSP = "\u200b"  # ZERO WIDTH SPACE
ZWJ = "\u200d"
LINE_SEPARATOR = "\u2028"
NBSP = "\u00a0"
PRIVATE_USE = "\ue000"

CONTROL = [NUL, "\x01", "\t", "\n", "\r", ESC, "\x1f", DEL, "\x80", C1_CSI, "\x9f"]
INVISIBLE_NOT_CONTROL = [RLO, ZWSP, ZWJ, "\ufeff", LINE_SEPARATOR, "\u2029", PRIVATE_USE]


# -- printable -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [*CONTROL, LONE_SURROGATE, "\udfff"])
def test_control_characters_and_lone_surrogates_are_not_printable(bad: str) -> None:
    for value in (bad, f"acme{bad}", f"{bad}acme", f"ac{bad}me"):
        assert not text.is_printable(value)
        with pytest.raises(ValueError, match="must not contain control characters"):
            text.printable(value)


@pytest.mark.parametrize(
    "good",
    [
        "acme",
        "Thermo 1",
        "Ünïcödé",
        "\u00a1",
        "\u00a0",
        "日本",
        "\U0001f600",
        *INVISIBLE_NOT_CONTROL,
    ],
)
def test_the_rest_is_printable(good: str) -> None:
    # Invisible characters are printable: the visible tier (names, identifiers) refuses them.
    assert text.printable(good) == good


@given(st.text())
def test_printable_is_exactly_no_cc_and_no_cs(value: str) -> None:
    expected = all(unicodedata.category(c) not in {"Cc", "Cs"} for c in value)
    assert text.is_printable(value) is expected


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_the_json_schema_pattern_says_the_same(value: str) -> None:
    assert (re.fullmatch(text.PRINTABLE_PATTERN, value) is not None) is text.is_printable(value)


# -- visible ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [*CONTROL, LONE_SURROGATE, *INVISIBLE_NOT_CONTROL])
def test_invisible_characters_are_found(bad: str) -> None:
    assert text.first_invisible(f"ab{bad}c") == bad


def test_other_spaces_count_only_when_asked() -> None:
    assert text.first_invisible(f"a{NBSP}b") is None
    assert text.first_invisible(f"a{NBSP}b", spaces=True) == NBSP
    assert text.first_invisible("a\u3000b", spaces=True) == "\u3000"  # ideographic space
    assert text.first_invisible("a b", spaces=True) is None


# -- names of vendors and models -------------------------------------------------------


def test_name_limit_is_64_characters() -> None:
    text.check_name("vendor", "v" * 64)
    text.check_name("vendor", "\U0001d538" * 64)  # characters, not bytes
    for bad in ("", "v" * 65):
        with pytest.raises(Malformed, match="The vendor name must be 1 to 64 characters"):
            text.check_name("vendor", bad)


@pytest.mark.parametrize(
    "bad", [NUL, ESC, DEL, C1_CSI, LONE_SURROGATE, RLO, ZWSP, ZWJ, LINE_SEPARATOR, NBSP]
)
def test_names_refuse_what_would_not_display_as_stored(bad: str) -> None:
    with pytest.raises(Malformed, match=f"U\\+{ord(bad):04X}; use printable characters"):
        text.check_name("model", f"thermo{bad}1")


@pytest.mark.parametrize("bad", ["a/b", ".", "..", " thermo", "thermo ", "\tthermo"])
def test_names_are_path_segments_without_edge_spaces(bad: str) -> None:
    with pytest.raises(Malformed, match="The model name"):
        text.check_name("model", bad)


def test_a_name_may_hold_plain_spaces_and_dots() -> None:
    text.check_name("model", "Thermo 1.2 (EU)")
    text.check_name("model", "...")


# -- person names (owners, token subjects) ---------------------------------------------


def test_person_names_are_1_to_128_printable_characters() -> None:
    assert text.is_person_name("o" * 128)
    assert text.is_person_name(RLO + "owner")  # printable; shown quoted, never executed
    assert not text.is_person_name("")
    assert not text.is_person_name("o" * 129)
    for bad in (NUL, ESC, C1_CSI, LONE_SURROGATE):
        assert not text.is_person_name(f"own{bad}er")


class _TokenStore:
    """Records add_token; a refused subject must never reach it."""

    def __init__(self) -> None:
        self.subjects: list[str | None] = []

    async def add_token(self, **fields: Any) -> ApiToken:
        self.subjects.append(fields["subject"])
        now = datetime.now(UTC)
        return ApiToken(fields["token_id"], fields["role"], fields["subject"], now, None)


async def test_attack_token_subject_128_is_taken_129_and_control_are_refused() -> None:
    store = _TokenStore()
    issued = await tokens.create_token(store, "owner", "o" * 128)  # type: ignore[arg-type]
    assert issued.record.subject == "o" * 128
    for bad in ("o" * 129, f"owner{NUL}", f"owner{C1_CSI}", f"owner{LONE_SURROGATE}", ""):
        with pytest.raises(Malformed, match="1 to 128 printable characters"):
            await tokens.create_token(store, "owner", bad)  # type: ignore[arg-type]
    assert store.subjects == ["o" * 128]


# -- the MQTT door -----------------------------------------------------------------------


def _request(**fields: Any) -> bytes:
    body = {"request_id": "r-1", "vendor": "acme", "model": "thermo", "identifier": "0011"}
    return json.dumps({**body, **fields}, ensure_ascii=True).encode()


@pytest.mark.parametrize("field", ["vendor", "model", "identifier"])
@pytest.mark.parametrize("bad", [NUL, ESC, DEL, C1_CSI, LONE_SURROGATE])
def test_attack_control_characters_in_a_request_are_malformed(field: str, bad: str) -> None:
    with pytest.raises(Malformed, match=f"'{field}' must be a string of 1 to 64 characters"):
        protocol.parse_request(_request(**{field: f"ab{bad}c"}))


@pytest.mark.parametrize("field", ["vendor", "model", "identifier"])
def test_request_fields_take_64_characters_not_65(field: str) -> None:
    assert getattr(protocol.parse_request(_request(**{field: "x" * 64})), field) == "x" * 64
    with pytest.raises(Malformed, match=f"'{field}' must be a string of 1 to 64"):
        protocol.parse_request(_request(**{field: "x" * 65}))


def test_invisible_identifiers_are_the_parsers_to_refuse() -> None:
    # Printable, so well formed; the identifier parser answers invalid_identifier.
    request = protocol.parse_request(_request(identifier=f"SN{ZWSP}1"))
    with pytest.raises(InvalidIdentifier, match="U\\+200B"):
        identifiers.normalize("serial", request.identifier)
    with pytest.raises(InvalidIdentifier, match="U\\+202E"):
        identifiers.normalize("serial", f"SN{RLO}1")


def test_client_and_request_ids_have_their_limits() -> None:
    assert protocol.CLIENT_ID_RE.fullmatch("c" * 128)
    assert not protocol.CLIENT_ID_RE.fullmatch("c" * 129)
    assert protocol.REQUEST_ID_RE.fullmatch("r" * 64)
    assert not protocol.REQUEST_ID_RE.fullmatch("r" * 65)
    for bad in ("a/b", "a+b", "a#b", f"a{NUL}", f"a{ZWSP}", "é"):
        assert not protocol.CLIENT_ID_RE.fullmatch(bad)
    assert protocol.parse_request(_request(request_id="r" * 64)).request_id == "r" * 64
    with pytest.raises(Malformed, match="'request_id' must be 1 to 64 characters"):
        protocol.parse_request(_request(request_id="r" * 65))


def test_identifier_limit_is_the_same_at_every_door() -> None:
    assert identifiers.MAX_LENGTH == text.IDENTIFIER_MAX
    assert identifiers.normalize("serial", "S" * 64) == "S" * 64
    with pytest.raises(InvalidIdentifier, match="at most 64"):
        identifiers.normalize("serial", "S" * 65)


# -- settings --------------------------------------------------------------------------


def test_share_group_takes_64_plain_characters_not_65() -> None:
    assert Settings(share_group="g" * 64).share_group == "g" * 64
    for bad in ("g" * 65, "a/b", f"g{NUL}", "grüppe"):
        with pytest.raises(ValidationError, match=r"must be 1\.\.64 characters"):
            Settings(share_group=bad)
