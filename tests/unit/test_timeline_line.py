"""The timeline's line in place of the older device attempts it does not show."""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.db import diagnosis as queries


def test_the_line_counts_what_is_not_shown_and_says_at_least_past_the_count() -> None:
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    exact = queries._older_attempts(170, 510, at)
    assert (exact.action, exact.code, exact.count, exact.at, exact.owner) == (
        "older_attempts",
        "not_shown",
        510,
        at,
        None,  # an owner's view, built from their own entries, leaves it out
    )
    assert exact.detail is not None
    assert exact.detail.startswith("170 older entries of device attempts (510 attempts)")
    assert not exact.attempt
    capped = queries._older_attempts(queries.OLDER_COUNTED, 12_345, at)
    assert capped.detail is not None
    assert capped.detail.startswith(
        "at least 1,000 older entries of device attempts (at least 12,345 attempts)"
    )
