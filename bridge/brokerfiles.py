"""The files of a Mosquitto run beside the bridge, written from the bridge's own settings.

``bridge broker-files DIR`` (the compose file's ``broker-init`` one-shot) writes into
DIR what the shipped ``mosquitto.conf`` names: the configuration itself (both listeners
on every interface, the plugin and certificate paths of the broker's image), the
password file with the bridge's login, the ACL for the topic prefix, and the
dynamic-security file with the admin login. The passwords come from the bridge's
settings (``BRIDGE_MQTT_URL``, ``BRIDGE_DYNSEC_PASSWORD``), so they never appear on a
command line, and are stored only as Mosquitto's salted hashes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bridge import brokerconf
from bridge.config import Settings, parse_mqtt_url
from bridge.embedded import configured_access
from bridge.errors import ConfigError

#: The broker's ports inside its container: plain MQTT for the bridges, TLS for devices.
PLAIN_PORT = 1883
TLS_PORT = 8883


def write_broker_files(
    settings: Settings,
    directory: Path,
    *,
    plugin: Path | None,
    tls_dir: Path | None,
    owner: tuple[int, int] | None = None,
) -> list[Path]:
    """Write the broker's files into ``directory``; returns the paths written.

    The dynamic-security file also holds every device login the bridge has created, so
    an existing one is kept: only its admin's password hash is replaced (the admin's
    password may have been changed in the environment). ``owner`` (uid, gid) is the
    broker's user, who must read these files and write the dynamic-security file and
    its persistence file into ``directory``.
    """
    if settings.mqtt_url is None:
        raise ConfigError("BRIDGE_MQTT_URL is not set; it names the bridge's broker login")
    mine = parse_mqtt_url(settings.mqtt_url.get_secret_value())
    if not mine.username or not mine.password:
        raise ConfigError("BRIDGE_MQTT_URL has no user and password for the bridge's login")
    admin = configured_access(settings).admin
    if plugin is not None and (admin is None or not admin.username or not admin.password):
        raise ConfigError(
            "the dynamic-security plugin needs its admin login: set BRIDGE_DYNSEC=true and "
            "BRIDGE_DYNSEC_USERNAME and BRIDGE_DYNSEC_PASSWORD"
        )
    directory.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(directory, *owner)
    written = [directory / "passwd", directory / "mosquitto.acl", directory / "mosquitto.conf"]
    _write(written[0], brokerconf.password_line(mine.username, mine.password) + "\n", owner)
    acl = brokerconf.render_acl(
        brokerconf.shipped("mosquitto.acl").read_text(), settings.topic_prefix
    )
    if mine.username != "bridge":  # the shipped ACL grants the bridge's topics to "bridge"
        acl = acl.replace("\nuser bridge\n", f"\nuser {mine.username}\n")
    _write(written[1], acl, owner)
    conf = brokerconf.render_conf(
        brokerconf.shipped("mosquitto.conf").read_text(),
        plain_port=PLAIN_PORT,
        tls_port=TLS_PORT if tls_dir is not None else None,
        bind="0.0.0.0",  # noqa: S104 (inside the broker's container; only 8883 is published)
        plugin=plugin,
    )
    if tls_dir is not None:
        conf = _certificates_in(conf, tls_dir)
    _write(written[2], conf, owner)
    if plugin is not None and admin is not None and admin.username and admin.password:
        dynsec_file = directory / "dynamic-security.json"
        _write_dynsec(dynsec_file, admin.username, admin.password, settings.topic_prefix, owner)
        written.append(dynsec_file)
    return written


def _write(path: Path, text: str, owner: tuple[int, int] | None) -> None:
    """Replace ``path`` at once (0600, the broker's user's): a broker starting meanwhile
    reads the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        if owner is not None:
            os.fchown(f.fileno(), *owner)
        f.write(text)
    os.replace(temporary, path)


def _certificates_in(conf: str, tls_dir: Path) -> str:
    """The shipped ``certfile tls/server.crt`` lines, pointed at ``tls_dir``."""
    out = []
    for line in conf.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in ("certfile", "keyfile", "cafile"):
            out.append(f"{words[0]} {tls_dir / Path(words[1]).name}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _write_dynsec(
    path: Path, username: str, password: str, prefix: str, owner: tuple[int, int] | None
) -> None:
    if not path.is_file():
        _write(path, json.dumps(brokerconf.dynsec_config(username, password, prefix=prefix)), owner)
        return
    try:
        current = json.loads(path.read_text())
        clients = current["clients"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a dynamic-security file: {exc}") from exc
    fresh = brokerconf.dynsec_config(username, password, prefix=prefix)["clients"][0]
    for client in clients:
        if client.get("username") == username:
            client.update({k: fresh[k] for k in ("password", "salt", "iterations")})
            break
    else:
        clients.append(fresh)
    _write(path, json.dumps(current, indent=1), owner)


def parse_owner(text: str) -> tuple[int, int]:
    """``UID:GID`` (numbers) as a pair."""
    uid, sep, gid = text.partition(":")
    if not (uid.isdigit() and gid.isdigit() and sep):
        raise ValueError(f"{text!r} is not UID:GID (two numbers)")
    return int(uid), int(gid)
