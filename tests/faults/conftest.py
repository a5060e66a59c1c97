"""Fixtures of the fault suite: a PostgreSQL and a Mosquitto of its own, which it may stop
and crash."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.cluster import Broker, Postgres


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A persistent Mosquitto of the test's own, on a free port; restartable."""
    b = Broker()
    b.start()
    yield b
    b.close()
