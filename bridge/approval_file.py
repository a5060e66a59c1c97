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

Memory stays bounded whatever the file or the ranges: lines are read one at a
time (at most ``MAX_LINE`` characters are kept of one), ranges are expanded
lazily into batches of a fixed size, at most ``MAX_REPORTED_REFUSALS`` refusals
are kept (all are counted), and duplicates are found by the database
(:meth:`bridge.db.transitions.Transitions.bulk_approver`), not in a set here.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from bridge import identifiers
from bridge.errors import InvalidIdentifier, Malformed
from bridge.identifiers import Kind

#: A range row larger than this is refused: a typo in a range's first digits
#: would otherwise approve billions of numbers.
MAX_RANGE: Final = 1_000_000

#: A line longer than this is refused; only its start is kept in memory.
MAX_LINE: Final = 4096

#: Refusals reported one by one; past this many they are only counted, so a
#: file of ten million bad lines does not become ten million report entries.
MAX_REPORTED_REFUSALS: Final = 1000

#: Identifiers handed to the database at a time: the memory an import holds.
BATCH_SIZE: Final = 50_000

_HEX_KINDS: Final = frozenset({Kind.MAC, Kind.MEID, Kind.ESN})
_NUMERIC_TAIL: Final = re.compile(r"(.*?)(\d+)")


@dataclass(frozen=True)
class Refusal:
    line: int
    text: str
    reason: str


@dataclass
class ParsedRows:
    """What parsing found so far: rows read, refusals (the first few kept), the last line."""

    refused: list[Refusal] = field(default_factory=list)
    refused_total: int = 0
    rows: int = 0
    last_line: int = 0

    def refuse(self, line: int, text: str, reason: str) -> None:
        self.refused_total += 1
        if len(self.refused) < MAX_REPORTED_REFUSALS:
            shown = text if len(text) <= 200 else text[:200] + "…"
            self.refused.append(Refusal(line, shown, reason))


def count_lines(path: Path) -> int:
    """Lines in the file (for progress), counted in blocks: one huge line is not held."""
    count = 0
    with _open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count


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
    lines = _bounded_lines(f)
    first = ""
    number = 0
    for number, line in lines:  # noqa: B007 (number is used after the loop)
        if line.strip():
            first = line
            break
    if not first:
        return
    header = next(csv.reader([first]))
    names = [h.strip().lower() for h in header]
    if len(names) == 1 and names[0] != "identifier":
        # One identifier per line; the first one was read already.
        yield from _plain(itertools.chain([(number, first)], lines))
        return
    if "identifier" not in names:
        raise Malformed(
            f"The CSV file has no 'identifier' column (its columns are {', '.join(header)})."
        )
    column = names.index("identifier")
    reader = csv.reader(line for _, line in lines)
    try:
        for record in reader:
            if not record or not "".join(record).strip():
                continue
            yield number + reader.line_num, record[column] if column < len(record) else ""
    except csv.Error as exc:
        raise Malformed(
            f"The CSV file cannot be read past line {number + reader.line_num}: {exc}."
        ) from exc


def _bounded_lines(f: IO[str]) -> Iterator[tuple[int, str]]:
    """(number, line); a line over MAX_LINE is cut there (and refused by the parser)."""
    number = 0
    while line := f.readline(MAX_LINE + 1):
        number += 1
        if len(line) > MAX_LINE and not line.endswith("\n"):
            # Skip the rest of the line without holding it.
            while (rest := f.readline(1 << 16)) and not rest.endswith("\n"):
                pass
        yield number, line


def _plain(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    for number, line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            yield number, text


def parse_rows(kind: str, pattern: str | None, rows: Iterable[tuple[int, str]]) -> ParsedRows:
    """Parse every row, keeping nothing but the count and the refusals (a check, or tests)."""
    parsed = ParsedRows()
    for _ in parse_batches(kind, pattern, rows, parsed):
        pass
    return parsed


def parse_batches(
    kind: str,
    pattern: str | None,
    rows: Iterable[tuple[int, str]],
    parsed: ParsedRows,
    size: int = BATCH_SIZE,
) -> Iterator[list[str]]:
    """Batches of at most ``size`` canonical identifiers, recording in ``parsed`` as it goes.

    Ranges are expanded lazily, a batch at a time, so memory is one batch
    whatever the ranges. Duplicates are yielded as they come: the database
    counts them (one table holds what a file already gave).
    """
    model_kind = Kind(kind)
    batch: list[str] = []
    for line, text in rows:
        parsed.rows += 1
        parsed.last_line = line
        try:
            values = _row_values(model_kind, pattern, text)
        except (InvalidIdentifier, Malformed) as exc:
            parsed.refuse(line, text, exc.message)
            continue
        for value in values:
            batch.append(value)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def _row_values(kind: Kind, pattern: str | None, text: str) -> Iterator[str]:
    if len(text) > MAX_LINE:
        raise Malformed(f"The line is longer than {MAX_LINE:,} characters.")
    if ".." in text:
        return expand_range(kind, pattern, text)
    return iter((identifiers.normalize(kind, text, pattern),))


def row_size(kind: Kind, pattern: str | None, text: str) -> int:
    """How many identifiers a row gives (0 for a row that will be refused)."""
    try:
        return range_size(kind, pattern, text) if ".." in text else 1
    except (InvalidIdentifier, Malformed):
        return 0


def range_size(kind: Kind, pattern: str | None, text: str) -> int:
    """How many identifiers ``FIRST..LAST`` holds; raises as :func:`expand_range` would."""
    _, first, last = _range_bounds(kind, pattern, text)
    return last - first + 1


def expand_range(kind: Kind, pattern: str | None, text: str) -> Iterator[str]:
    """The canonical identifiers of ``FIRST..LAST``, both ends included, one at a time.

    Every refusal is raised here, before the first identifier is produced, so a
    bad range is refused whole, never loaded in part.
    """
    render, first, last = _range_bounds(kind, pattern, text)
    if kind is Kind.SERIAL and pattern is not None:
        # The pattern may refuse a middle value (SN\d{4} takes SN0999..SN1000 but
        # not SN9999..SN10000): check them all before yielding any.
        for n in range(first, last + 1):
            identifiers.normalize(kind, render(n), pattern)
    return (render(n) for n in range(first, last + 1))


def _range_bounds(
    kind: Kind, pattern: str | None, text: str
) -> tuple[Callable[[int], str], int, int]:
    """How to write the n-th value of the range, and its first and last n."""
    first_text, _, last_text = text.partition("..")
    first = identifiers.normalize(kind, first_text, pattern)
    last = identifiers.normalize(kind, last_text, pattern)
    if kind in _HEX_KINDS:
        start, stop = int(first, 16), int(last, 16)
        _check_range(text, start, stop)
        hex_width = len(first)
        return (lambda n: format(n, f"0{hex_width}X")), start, stop
    if kind is Kind.IMEI:
        # The 15th digit is a check digit: count the body, let normalize compute it.
        start, stop = int(first[:14]), int(last[:14])
        _check_range(text, start, stop)
        return (lambda n: identifiers.normalize(kind, f"{n:014d}")), start, stop
    head, tail = _split_tail(first, text)
    last_head, last_tail = _split_tail(last, text)
    if head != last_head:
        raise Malformed(
            f"The range {text!r} has ends with different prefixes ({head!r} and {last_head!r})."
        )
    start, stop = int(tail), int(last_tail)
    _check_range(text, start, stop)
    width = len(tail)
    # Built from canonical parts (upper-case, no longer than the last end), so
    # canonical; expand_range checks the pattern.
    return (lambda n: f"{head}{n:0{width}d}"), start, stop


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
