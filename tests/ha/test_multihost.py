"""The multi-host DSN when a listed host swallows packets instead of refusing them.

On loopback a dead PostgreSQL refuses connections at once. A host that is gone from a
network does not answer at all; that is simulated here by a listening socket whose
accept queue is full, so the kernel drops every new SYN.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

from bridge.store import Store
from tests.ha.cluster import SUPERUSER, SUPERUSER_PASSWORD, Postgres15


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that never completes a TCP handshake (full accept queue)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    queued = []
    for _ in range(3):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(("127.0.0.1", port))
        queued.append(client)
    time.sleep(0.2)
    try:
        yield port
    finally:
        for client in queued:
            client.close()
        listener.close()


async def test_a_silent_first_host_does_not_hide_the_primary(pg15: Postgres15) -> None:
    with silent_port() as dead:
        dsn = (
            f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{dead},"
            f"127.0.0.1:{pg15.port}/postgres?target_session_attrs=read-write"
        )
        began = time.monotonic()
        # Before: asyncpg spent its one 10 s timeout on the silent host and never tried
        # the second; Store.open failed with Unavailable after 10 s, and so did every
        # new connection of a running bridge.
        async with Store.open(dsn, pool_size=1) as store:
            await store.ping()
        elapsed = time.monotonic() - began
    assert elapsed < 8, f"connecting took {elapsed:.1f} s"
