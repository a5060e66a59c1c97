"""Reading approval files: layouts, line numbers, ranges. Pure, no database."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import identifiers
from bridge.approval_file import (
    MAX_LINE,
    MAX_RANGE,
    MAX_REPORTED_REFUSALS,
    ParsedRows,
    count_lines,
    expand_range,
    parse_batches,
    parse_rows,
    read_rows,
)
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
    # Duplicates are the database's to count (see the bulk approval tests).
    assert [(r.line, r.text) for r in parsed.refused] == [(2, "nope")]
    assert parsed.refused_total == 1
    assert parsed.rows == 4


def test_batches_are_bounded_whatever_the_ranges() -> None:
    parsed = ParsedRows()
    rows = [(1, f"000000000000..{MAX_RANGE - 1:012X}"), (2, "00:00:00:00:00:01")]
    sizes = [len(b) for b in parse_batches("mac", None, rows, parsed, size=70_000)]
    assert max(sizes) == 70_000
    assert sum(sizes) == MAX_RANGE + 1


def test_refusals_are_counted_but_only_the_first_thousand_kept() -> None:
    parsed = parse_rows("mac", None, ((n, "x" * 300) for n in range(1, 5001)))
    assert parsed.refused_total == 5000
    assert len(parsed.refused) == MAX_REPORTED_REFUSALS
    assert parsed.refused[0].text == "x" * 200 + "…"


def test_a_huge_line_is_refused_without_being_held(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("00:00:00:00:00:01\n" + "A" * 5_000_000 + "\n00:00:00:00:00:02\n")
    rows = list(read_rows(path))
    assert [(n, len(t)) for n, t in rows] == [(1, 17), (2, MAX_LINE + 1), (3, 17)]
    parsed = parse_rows("mac", None, rows)
    assert [(r.line, r.reason) for r in parsed.refused] == [
        (2, f"The line is longer than {MAX_LINE:,} characters.")
    ]
    assert count_lines(path) == 3


def test_a_range_the_pattern_refuses_in_the_middle_is_refused_whole() -> None:
    with pytest.raises(InvalidIdentifier, match="SN0999"):
        expand_range(Kind.SERIAL, r"SN(0998|1001|1000)", "SN0998..SN1001")
    parsed = ParsedRows()
    batches = list(
        parse_batches("serial", r"SN(0998|1001)", [(1, "SN0998..SN1001"), (2, "SN1001")], parsed)
    )
    assert batches == [["SN1001"]]
    assert [r.line for r in parsed.refused] == [1]


@given(st.integers(0, 2**48 - 1), st.integers(0, 300))
def test_mac_ranges_count_in_hex(start: int, size: int) -> None:
    stop = min(start + size, 2**48 - 1)
    first, last = f"{start:012x}", f"{stop:012X}"
    values = list(expand_range(Kind.MAC, None, f"{first}..{last}"))
    assert len(values) == stop - start + 1
    assert values[0] == first.upper() and values[-1] == last
    assert values == sorted(values)
    assert all(identifiers.normalize(Kind.MAC, v) == v for v in values)


def test_serial_ranges_keep_the_tail_width_and_the_pattern() -> None:
    assert list(expand_range(Kind.SERIAL, None, "ab-0998..AB-1001")) == [
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
    assert list(expand_range(Kind.ESN, None, "8000000F..80000011")) == [
        "8000000F",
        "80000010",
        "80000011",
    ]
    imeis = list(expand_range(Kind.IMEI, None, "490154203237518..49015420323752"))
    assert imeis == ["490154203237518", "490154203237526"]


def test_huge_and_backwards_ranges_are_refused() -> None:
    with pytest.raises(Malformed, match="split it"):
        expand_range(Kind.MAC, None, f"000000000000..{MAX_RANGE:012X}")
    with pytest.raises(Malformed, match="ends before it starts"):
        expand_range(Kind.MAC, None, "000000000002..000000000001")


def test_a_csv_quote_never_closed_is_refused_not_held(tmp_path: Path) -> None:
    # The csv module would gather the rest of the file into one field: it stops
    # at its field limit (128 KiB), and the file is refused in one sentence.
    text = 'identifier,note\n"00:00:00:00:00:01,x\n' + "00:00:00:00:00:02,y\n" * 20_000
    with pytest.raises(Malformed, match=r"The CSV file cannot be read past line \d+: field larger"):
        _rows(tmp_path, text)
