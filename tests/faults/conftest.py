"""Fixtures of the fault suite: a PostgreSQL of its own, which the suite may stop and crash."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.cluster import Postgres


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        yield pg
    finally:
        pg.close()
