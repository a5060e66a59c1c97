"""The OpenAPI document's patterns say what the HTTP API's checks accept: a text the
pattern refuses is refused by the code, and a text it allows is accepted (but for the
rules the document states in words)."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from bridge.errors import Malformed
from bridge.text import check_name, printable
from bridge.web.bodies import NEW_NAME, PRINTABLE
from bridge.web.params import INSTANT, SinceQuery

_SINCE: TypeAdapter[datetime | None] = TypeAdapter(SinceQuery)


def _printable_ok(text: str) -> bool:
    try:
        printable(text)
    except ValueError:
        return False
    return True


@given(st.text())
@example("a\x00b")
@example("\x7f")
@example("\x1f")
@example("\x9f")
def test_printable_pattern_is_the_printable_check(text: str) -> None:
    assert bool(re.fullmatch(PRINTABLE, text)) == _printable_ok(text)


def test_lone_surrogates_are_refused_though_no_json_schema_string_holds_one() -> None:
    assert not _printable_ok("a\ud800")


def _name_ok(text: str) -> bool:
    if not 1 <= len(text) <= 64 or not _printable_ok(text):
        return False
    try:
        check_name("model", text)
    except Malformed:
        return False
    return True


def _invisible(text: str) -> bool:
    # The rule stated in words: format, separator and unassigned characters (not space).
    return any(
        c != " "
        and unicodedata.category(c).startswith(("C", "Z"))
        and unicodedata.category(c) != "Cc"
        for c in text
    )


@given(st.text(min_size=1, max_size=64))
@example(".")
@example("..")
@example("...")
@example(" a")
@example("a ")
@example("a/b")
@example("a\u200bb")
@example("a\x85b")
@example(".a")
@example("a\u3000")
@example("\u2009a")
def test_new_name_pattern_is_the_name_check(text: str) -> None:
    allowed = bool(re.fullmatch(NEW_NAME, text))
    if _name_ok(text):
        assert allowed, text
    elif allowed:
        assert _invisible(text), text


@given(st.from_regex(INSTANT, fullmatch=True))
@example("2024-02-29T00:00")
@example("2000-02-29T23:59:59.999999Z")
@example("0001-01-01T00:00:00")
def test_every_instant_the_document_allows_is_accepted(text: str) -> None:
    if text.startswith(("0001-01-01", "9999-12-31")) and text[-6] in "+-":
        return  # the calendar's ends, moved out of it by a zone: refused, as said in words
    assert _SINCE.validate_python(text) is not None


@given(st.text(max_size=40))
@example("0.5")
@example("1700000000")
@example("2024-01-01")
@example("2023-02-29T00:00")
@example("2024-01-01 00:00")
@example("yesterday")
def test_every_instant_the_document_refuses_is_refused(text: str) -> None:
    if re.fullmatch(INSTANT, text):
        return
    with pytest.raises(ValidationError):
        _SINCE.validate_python(text)
