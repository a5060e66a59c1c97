"""Reading approval files: layouts, line numbers, ranges. Pure, no database."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import identifiers
from bridge.approval_file import MAX_RANGE, expand_range, parse_rows, read_rows
from bridge.errors import InvalidIdentifier, Malformed
from bridge.identifiers import Kind


def _rows(tmp_path: Path, text: str) -> list[tuple[int, str]]:
    path = tmp_path / "f.txt"
    path.write_text(text)
    return list(read_rows(path))


def test_plain_lines_keep_their_numbers_and_skip_blanks_and_comments(tmp_path: Path) -> None:
    text = "\n# header comment\n 00:00:00:00:00:01 \n\n00:00:00:00:00:02\n"
    assert _rows(tmp_path, text) == [(3, "00:00:00:00:00:01"), (5, "00:00:00:00:00:02")]


def test_csv_uses_the_identifier_column_whatever_its_place_or_case(tmp_path: Path) -> None:
    text = '\ufeffsku, Identifier ,note\nA,00:01,"x, y"\n\nB,00:02\nC\n'
    assert _rows(tmp_path, text) == [(2, "00:01"), (4, "00:02"), (5, "")]


def test_a_single_identifier_header_is_csv(tmp_path: Path) -> None:
    assert _rows(tmp_path, "identifier\nSN1\nSN2\n") == [(2, "SN1"), (3, "SN2")]


def test_csv_without_identifier_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Malformed, match="no 'identifier' column"):
        _rows(tmp_path, "mac,sku\n00,1\n")


def test_an_empty_file_has_no_rows(tmp_path: Path) -> None:
    assert _rows(tmp_path, "\n\n") == []


def test_parse_rows_reports_refusals_and_duplicates() -> None:
    parsed = parse_rows(
        "mac",
        None,
        [
            (1, "00:00:00:00:00:01"),
            (2, "nope"),
            (3, "000000000001"),
            (4, "00:00:00:00:00:01..00:00:00:00:00:02"),
        ],
    )
    assert parsed.first_line == {"000000000001": 1, "000000000002": 4}
    assert parsed.duplicates == 2
    assert [(r.line, r.text) for r in parsed.refused] == [(2, "nope")]
    assert parsed.rows == 4


@given(st.integers(0, 2**48 - 1), st.integers(0, 300))
def test_mac_ranges_count_in_hex(start: int, size: int) -> None:
    stop = min(start + size, 2**48 - 1)
    first, last = f"{start:012x}", f"{stop:012X}"
    values = expand_range(Kind.MAC, None, f"{first}..{last}")
    assert len(values) == stop - start + 1
    assert values[0] == first.upper() and values[-1] == last
    assert values == sorted(values)
    assert all(identifiers.normalize(Kind.MAC, v) == v for v in values)


def test_serial_ranges_keep_the_tail_width_and_the_pattern() -> None:
    assert expand_range(Kind.SERIAL, None, "ab-0998..AB-1001") == [
        "AB-0998",
        "AB-0999",
        "AB-1000",
        "AB-1001",
    ]
    with pytest.raises(InvalidIdentifier):
        expand_range(Kind.SERIAL, r"SN\d{3}", "SN998..SN1000")
    with pytest.raises(Malformed, match="different prefixes"):
        expand_range(Kind.SERIAL, None, "A1..B3")
    with pytest.raises(Malformed, match="end in digits"):
        expand_range(Kind.SERIAL, None, "A1..B")


def test_esn_and_imei_ranges() -> None:
    assert expand_range(Kind.ESN, None, "8000000F..80000011") == [
        "8000000F",
        "80000010",
        "80000011",
    ]
    imeis = expand_range(Kind.IMEI, None, "490154203237518..49015420323752")
    assert imeis == ["490154203237518", "490154203237526"]


def test_huge_and_backwards_ranges_are_refused() -> None:
    with pytest.raises(Malformed, match="split it"):
        expand_range(Kind.MAC, None, f"000000000000..{MAX_RANGE:012X}")
    with pytest.raises(Malformed, match="ends before it starts"):
        expand_range(Kind.MAC, None, "000000000002..000000000001")
