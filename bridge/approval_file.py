"""Read a vendor's approval file into canonical identifiers. Pure apart from reading the file.

Two layouts are accepted, told apart by the first non-blank line:

- one identifier per line (blank lines and ``#`` comments skipped);
- CSV with a header row that has an ``identifier`` column (other columns ignored).

Any row may be a range ``FIRST..LAST`` (both ends included): MAC, MEID and ESN
ranges count in hex, IMEI ranges count the 14-digit body (check digits are
computed), serial ranges count the numeric tail and keep its width
(``SN0099..SN0101``). Every value goes through :func:`bridge.identifiers.normalize`
or is built in canonical form from ends that did; a row that does not parse is
refused with its line number and the reason, and the other rows still count.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from bridge import identifiers
from bridge.errors import InvalidIdentifier, Malformed
from bridge.identifiers import Kind

#: A range row larger than this is refused: a typo in a range's first digits
#: would otherwise approve billions of numbers.
MAX_RANGE: Final = 1_000_000

_HEX_KINDS: Final = frozenset({Kind.MAC, Kind.MEID, Kind.ESN})
_NUMERIC_TAIL: Final = re.compile(r"(.*?)(\d+)")


@dataclass(frozen=True)
class Refusal:
    line: int
    text: str
    reason: str


@dataclass
class ParsedRows:
    """Unique canonical identifiers (with the line that first gave each) and refusals."""

    first_line: dict[str, int] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)
    duplicates: int = 0
    rows: int = 0
    last_line: int = 0


def count_lines(path: Path) -> int:
    with _open(path, "rb") as f:
        return sum(1 for _ in f)


def read_rows(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each identifier row of the file, header and comments left out."""
    with _open(path, "r") as f:
        yield from _rows(f)


def _open(path: Path, mode: str) -> IO[Any]:
    try:
        if "b" in mode:
            return path.open(mode)
        return path.open(mode, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise Malformed(f"The file {str(path)!r} cannot be read: {exc.strerror}.") from exc


def _rows(f: IO[str]) -> Iterator[tuple[int, str]]:
    first = ""
    number = 0
    for number, line in enumerate(f, start=1):  # noqa: B007 (number is used after the loop)
        if line.strip():
            first = line
            break
    if not first:
        return
    header = next(csv.reader([first]))
    names = [h.strip().lower() for h in header]
    if len(names) == 1 and names[0] != "identifier":
        # One identifier per line; the first one was read already.
        yield from _plain([(number, first)])
        yield from _plain(enumerate(f, start=number + 1))
        return
    if "identifier" not in names:
        raise Malformed(
            f"The CSV file has no 'identifier' column (its columns are {', '.join(header)})."
        )
    column = names.index("identifier")
    reader = csv.reader(f)
    for record in reader:
        if not record or not "".join(record).strip():
            continue
        yield number + reader.line_num, record[column] if column < len(record) else ""


def _plain(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    for number, line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            yield number, text


def parse_rows(kind: str, pattern: str | None, rows: Iterable[tuple[int, str]]) -> ParsedRows:
    """Normalize every row (expanding ranges); refusals carry the line number and reason."""
    parsed = ParsedRows()
    for _ in parse_batches(kind, pattern, rows, parsed):
        pass
    return parsed


def parse_batches(
    kind: str,
    pattern: str | None,
    rows: Iterable[tuple[int, str]],
    parsed: ParsedRows,
    size: int = 50_000,
) -> Iterator[list[str]]:
    """Batches of about ``size`` new canonical identifiers, recording in ``parsed`` as it goes.

    Batches let the caller load one while the next is parsed; an identifier seen
    before (in this file) is counted as a duplicate and not yielded again.
    """
    first_line = parsed.first_line
    model_kind = Kind(kind)
    batch: list[str] = []
    for line, text in rows:
        parsed.rows += 1
        parsed.last_line = line
        try:
            values: Iterable[str] = (
                expand_range(model_kind, pattern, text)
                if ".." in text
                else (identifiers.normalize(model_kind, text, pattern),)
            )
            for value in values:
                if value in first_line:
                    parsed.duplicates += 1
                else:
                    first_line[value] = line
                    batch.append(value)
        except (InvalidIdentifier, Malformed) as exc:
            parsed.refused.append(Refusal(line, text, exc.message))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def expand_range(kind: Kind, pattern: str | None, text: str) -> list[str]:
    """The canonical identifiers of ``FIRST..LAST``, both ends included."""
    first_text, _, last_text = text.partition("..")
    first = identifiers.normalize(kind, first_text, pattern)
    last = identifiers.normalize(kind, last_text, pattern)
    if kind in _HEX_KINDS:
        start, stop = int(first, 16), int(last, 16)
        _check_range(text, start, stop)
        width = len(first)
        return [format(n, f"0{width}X") for n in range(start, stop + 1)]
    if kind is Kind.IMEI:
        # The 15th digit is a check digit: count the body, let normalize compute it.
        start, stop = int(first[:14]), int(last[:14])
        _check_range(text, start, stop)
        return [identifiers.normalize(kind, f"{n:014d}") for n in range(start, stop + 1)]
    head, tail = _split_tail(first, text)
    last_head, last_tail = _split_tail(last, text)
    if head != last_head:
        raise Malformed(
            f"The range {text!r} has ends with different prefixes ({head!r} and {last_head!r})."
        )
    start, stop = int(tail), int(last_tail)
    _check_range(text, start, stop)
    width = len(tail)
    return [
        identifiers.normalize(kind, f"{head}{n:0{width}d}", pattern) for n in range(start, stop + 1)
    ]


def _split_tail(value: str, text: str) -> tuple[str, str]:
    match = _NUMERIC_TAIL.fullmatch(value)
    if match is None:
        raise Malformed(
            f"The range {text!r} needs serial numbers that end in digits, which it counts."
        )
    return match.group(1), match.group(2)


def _check_range(text: str, start: int, stop: int) -> None:
    if stop < start:
        raise Malformed(f"The range {text!r} ends before it starts.")
    if stop - start + 1 > MAX_RANGE:
        raise Malformed(
            f"The range {text!r} holds {stop - start + 1:,} identifiers; "
            f"split it into ranges of at most {MAX_RANGE:,}."
        )
