"""Fixtures: a real PostgreSQL and a real Mosquitto per session; per test, a fresh
database cloned from a migrated template and a topic prefix of its own."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.store import Store
from tests import services
from tests.helpers import RunningBridge, start_bridge

#: Random per run: a secret written in the repository is refused by `serve` (config.py).
TEST_SECRET = "test-secret-" + secrets.token_urlsafe(32)
HA_SUITE = Path(__file__).resolve().parent / "ha"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ha",
        action="store_true",
        help="run the failover suite (tests/ha): Debian's postgresql, patroni, etcd-server "
        "and pgbouncer; a separate, longer CI step",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (visibly: "N deselected") the failover suite unless --ha is given."""
    if config.getoption("--ha"):
        return
    ha = [item for item in items if HA_SUITE in item.path.parents]
    if ha:
        config.hook.pytest_deselected(items=ha)
        items[:] = [item for item in items if item not in ha]


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with services.postgres() as url:
        yield url


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    with services.mosquitto() as url:
        yield url


@pytest.fixture(scope="session")
async def template_db(postgres_url: str) -> str:
    """A database with every migration applied, cloned by each test."""
    name = f"bridge_template_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    async with Store.open(_with_database(postgres_url, name), pool_size=1) as store:
        await store.migrate()
    return name


@pytest.fixture
async def database_url(postgres_url: str, template_db: str) -> AsyncIterator[str]:
    name = f"bridge_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await conn.close()
    yield _with_database(postgres_url, name)
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def prefix() -> str:
    return f"test-{secrets.token_hex(5)}/provision"


@pytest.fixture
def settings(database_url: str, mqtt_url: str, prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        mqtt_url=mqtt_url,
        topic_prefix=prefix,
        secret=TEST_SECRET,
        client_id=f"bridge-{secrets.token_hex(5)}",
        state_dir="/nonexistent-state-dir-tests-must-not-use-it",
    )


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[Admin]:
    async with Admin.connect(settings, actor="test") as a:
        yield a


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[RunningBridge]:
    running = await start_bridge(settings)
    yield running
    await running.halt()


@pytest.fixture(autouse=True)
def _quiet_mqtt_logs() -> None:
    logging.getLogger("mqtt").setLevel(logging.WARNING)
