"""Serial patterns run in linear time: RE2, bounded size, refused when RE2 cannot run them.

A vendor's pattern runs on anonymous device input in the bridge's event loop;
with Python's backtracking ``re``, ``(A+)+B`` against 30 ``A``s takes seconds.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import time

import pytest

from bridge import identifiers
from bridge.errors import InvalidIdentifier, Malformed
from bridge.identifiers import MAX_LENGTH, Kind, check_pattern, normalize

#: The promise: no identifier holds the event loop longer than this.
BOUND_SECONDS = 0.001

# The worst patterns found: catastrophic backtracking for a backtracking engine
# (nested and overlapping repetition), DFA state blow-up for RE2 ("an A 60
# characters before the end" needs a state per set of A positions), and the
# largest programs the size cap lets through (Unicode classes).
WORST_PATTERNS = (
    r"(A+)+B",
    r"(A|A)*B",
    r"(A|AA)+B",
    r"(.*A){20}B",
    r"(.*.*.*.*.*.*.*.*)*B",
    r"(?:A?){64}A{64}",
    r"(?i)(\w+\s?)+Z",
    r".*A.{60}",
    r".*A.{62}",
    r"[^Z]*A[^Z]{62}",
    r"(?i).*[AEIOUÄÖÜ].{40}",
    r".*\p{Lu}.{30}Z",
    r"(?:\p{L}|\d)+.{30}Z",
    r"(.*A.{10}|.*B.{12}|.*C.{14})Z",
)

ALPHABETS = ("AB", "AΩ", "AΩ中1", "ABCDÄÖ")


def _inputs(count: int) -> list[str]:
    rng = random.Random(12)
    out = ["A" * MAX_LENGTH, "A" * (MAX_LENGTH - 1) + "!", "Ω" * MAX_LENGTH]
    for _ in range(count):
        alphabet = rng.choice(ALPHABETS)
        out.append("".join(rng.choice(alphabet) for _ in range(MAX_LENGTH)))
    return out


def _match_seconds(pattern: str, text: str) -> float:
    # CPU time of this thread: what the match costs the event loop's thread,
    # without the time the shared test machine gives other processes meanwhile.
    start = time.thread_time()
    with contextlib.suppress(InvalidIdentifier):
        normalize(Kind.SERIAL, text, pattern)
    return time.thread_time() - start


def test_attack_backtracking_pattern_runs_in_linear_time() -> None:
    """Each worst pattern against fresh 64-character inputs (new DFA states each time).

    The median must be a tenth of the bound, the 99th percentile under half of
    it, and the worst under the bound; with Python's ``re`` the first input alone
    (``(A+)+B`` and 64 ``A``s) would run for years.
    """
    texts = _inputs(300)
    gc.disable()  # a collection is the test process's pause, not the pattern's
    try:
        for pattern in WORST_PATTERNS:
            check_pattern(pattern)  # each is accepted: the bound holds for accepted ones
            samples = sorted(_match_seconds(pattern, text) for text in texts)
            median = samples[len(samples) // 2]
            p99 = samples[int(len(samples) * 0.99)]
            assert median < BOUND_SECONDS / 10, (pattern, median)
            assert p99 < BOUND_SECONDS / 2, (pattern, p99)
            assert samples[-1] < BOUND_SECONDS, (pattern, samples[-1])
    finally:
        gc.enable()


def test_backtracking_pattern_still_answers_correctly() -> None:
    assert normalize(Kind.SERIAL, "a" * 60 + "b", r"(A+)+B") == "A" * 60 + "B"
    with pytest.raises(InvalidIdentifier, match="does not match the model's pattern"):
        normalize(Kind.SERIAL, "A" * 60, r"(A+)+B")


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        (r"(A)\1", "invalid escape sequence: \\1"),
        (r"(?=SN)\w+", "invalid perl operator: (?="),
        (r"(?<=SN)\d+", "invalid perl operator: (?<="),
        (r"(?P<x>A)(?P=x)", "invalid perl operator"),
        (r"A++", "bad repetition operator"),
        (r"SN(\d+", "missing )"),
    ],
)
def test_attack_pattern_that_needs_backtracking_is_refused(pattern: str, says: str) -> None:
    with pytest.raises(Malformed) as refused:
        check_pattern(pattern)
    message = refused.value.message
    assert message.startswith(f"The pattern {pattern!r} is not accepted: ")
    assert says in message
    assert "no backreferences, lookaround or possessive quantifiers" in message
    assert message.endswith(".") and "\n" not in message


def test_attack_oversized_pattern_is_refused() -> None:
    with pytest.raises(Malformed) as too_long:
        check_pattern("A" * 257)
    assert too_long.value.message == (
        "The pattern is 257 characters long; a pattern has at most 256."
    )
    check_pattern("A" * 256)
    # Short but large once compiled: Unicode classes repeated.
    with pytest.raises(Malformed, match=r"compiles to 2,\d{3} steps, .* at most 2,000 \("):
        check_pattern(r"\p{L}{2}")
    with pytest.raises(Malformed, match="compiles to too many steps"):
        check_pattern(r"\p{L}{64}")
    with pytest.raises(Malformed, match="invalid repetition size"):
        check_pattern(r"((A{100}){100}){100}")


def test_compiling_an_accepted_pattern_is_quick() -> None:
    # Compiling happens once per pattern and process, in the event loop.
    for pattern in (r"(?:\p{L}|\d)+.{30}Z", r".*\p{Lu}.{30}Z", r"[\p{L}\p{N}]+-\d{1,9}"):
        check_pattern(pattern)
        start = time.perf_counter()
        identifiers._compiled.__wrapped__(pattern)
        assert time.perf_counter() - start < 0.005, pattern


def test_stored_pattern_re2_refuses_matches_nothing_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A model created before RE2 may carry such a pattern; its numbers cannot be
    # checked, so none passes, and the operator learns it from the log.
    pattern = r"(?=SN)SN\d+-legacy"
    caplog.set_level(logging.ERROR, logger="bridge.identifiers")
    for _ in range(3):
        with pytest.raises(InvalidIdentifier) as refused:
            normalize(Kind.SERIAL, "SN123-LEGACY", pattern)
        assert refused.value.reason == (
            "it cannot be checked, because this bridge no longer accepts the model's "
            "pattern; the vendor must replace the pattern"
        )
    logged = [r for r in caplog.records if getattr(r, "event", None) == "pattern_unusable"]
    assert len(logged) == 1
    assert repr(pattern) in logged[0].getMessage()
    assert identifiers.unusable_pattern(pattern) is not None
    assert identifiers.unusable_pattern(r"SN\d+") is None
