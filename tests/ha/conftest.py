"""Fixtures of the failover suite: Debian's PostgreSQL 15, Patroni, etcd and pgbouncer.

The suite runs only with ``--ha`` (``python -m pytest tests/ha --ha``; CI runs it as a
step of its own). A missing package is an error naming it, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services
from tests.ha.cluster import SUPERUSER, SUPERUSER_PASSWORD, PatroniCluster, PgBouncer, Postgres15


@pytest.fixture(scope="module")
def ha_cluster() -> Iterator[PatroniCluster]:
    cluster = PatroniCluster(3, strict=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def ha_mqtt_url() -> Iterator[str]:
    # TCP_NODELAY as in the repository's mosquitto.conf: replies are not held back
    # by Nagle's algorithm, so time to key measures the database, not the broker.
    port = services.free_port()
    config = services.mosquitto_config(port, "set_tcp_nodelay true\n")
    with services.mosquitto_process(config, port):
        yield f"mqtt://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def pg15() -> Iterator[Postgres15]:
    server = Postgres15()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pgbouncer(pg15: Postgres15) -> Iterator[PgBouncer]:
    """Transaction pooling with 2 server connections: clients must share them."""
    bouncer = PgBouncer("127.0.0.1", pg15.port, SUPERUSER, SUPERUSER_PASSWORD, pool_size=2)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
