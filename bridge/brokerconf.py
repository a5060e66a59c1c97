"""The shipped Mosquitto configuration, made runnable in a working directory.

``mosquitto.conf`` and ``mosquitto.acl`` at the top of the repository are written for a
production broker. The embedded broker of ``bridge serve`` (and the tests) run that same
configuration after a few mechanical substitutions: ports and bind address, the topic
prefix in the ACL, where the dynamic-security plugin lives on this machine. This module
does those substitutions and writes the credential files Mosquitto reads: the password
file of the bridge's user and the dynamic-security file with its admin user, both in
Mosquitto's PBKDF2-SHA512 format, so no password ever appears on a command line.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError

#: Mosquitto's own choices for PBKDF2-SHA512 password hashes ("$7$" in password files).
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12

_PLUGIN_NAME = "mosquitto_dynamic_security.so"
_PLUGIN_PLACES = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/*-linux-gnu",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/lib/mosquitto",
    "/usr/local/lib/mosquitto",
)
#: The dynamic-security plugin's answer for what no role grants: "not mine to decide", so
#: that mosquitto.acl judges devices without a login (see dynsec_config).
DEFAULT_ACL_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}
_TLS_OPTIONS = ("certfile", "keyfile", "cafile", "capath", "tls_version", "require_certificate")


def shipped(name: str) -> Path:
    """A shipped broker file (mosquitto.conf, mosquitto.acl): the repository's or the wheel's."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / name, here / "_data" / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{name} is missing from this installation")


def find_dynsec_plugin() -> Path | None:
    """Where this machine keeps Mosquitto's dynamic-security plugin, if anywhere."""
    for place in _PLUGIN_PLACES:
        for found in sorted(glob.glob(os.path.join(place, _PLUGIN_NAME))):
            return Path(found)
    return None


def render_conf(
    template: str,
    *,
    plain_port: int,
    tls_port: int | None,
    bind: str | None = None,
    plugin: Path | None,
    run_as: str | None = None,
) -> str:
    """The shipped mosquitto.conf with this machine's ports, bind address and plugin.

    ``tls_port=None`` drops the TLS listener (and its certificate lines);
    ``plugin=None`` drops the dynamic-security plugin; ``bind`` pins every listener to
    one address; ``run_as`` is the user a broker started as root keeps running as
    (Mosquitto otherwise switches to "mosquitto", who cannot read our files).
    """
    out: list[str] = []
    in_tls_block = False
    for line in template.splitlines():
        words = line.split()
        option = words[0] if words and not line.startswith("#") else ""
        if option == "listener":
            in_tls_block = False
            if words[1] == "1883":
                out.append(f"listener {plain_port} {bind or (words[2] if len(words) > 2 else '')}")
            elif tls_port is None:
                in_tls_block = True
            else:
                where = bind or (words[2] if len(words) > 2 else "")
                out.append(f"listener {tls_port} {where}".rstrip())
            continue
        if in_tls_block and option in _TLS_OPTIONS:
            continue
        if option == "plugin" or option.startswith("plugin_opt_"):
            if plugin is None:
                continue
            if option == "plugin":
                out.append(f"plugin {plugin}")
                continue
        out.append(line.rstrip())
    if run_as:
        out.append(f"user {run_as}")
    return "\n".join(out) + "\n"


def render_acl(template: str, prefix: str) -> str:
    """The shipped ACL for another topic prefix."""
    if prefix == "provision":
        return template
    lines = [
        line.replace(" provision/", f" {prefix}/")
        if line.startswith(("pattern ", "topic "))
        else line
        for line in template.splitlines()
    ]
    return "\n".join(lines) + "\n"


def _pbkdf2(password: str) -> tuple[bytes, bytes]:
    salt = os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)
    return salt, digest


def password_line(username: str, password: str) -> str:
    """One line of a Mosquitto password file (what ``mosquitto_passwd`` writes)."""
    salt, digest = _pbkdf2(password)
    b64 = base64.b64encode
    return f"{username}:$7${_PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


#: The dynamic-security group (and role) that clients without a login belong to.
ANONYMOUS_GROUP = "bridge-anonymous"


def anonymous_acls(prefix: str) -> list[dict[str, Any]]:
    """What a client without a login may never subscribe to.

    Mosquitto's ``acl_file`` does not check subscriptions at all (2.0.11): it only
    withholds delivery. A client without a login could therefore join the bridges'
    share group and be handed its round-robin share of activation requests, which the
    ACL then never delivers to it: requests black-holed. The dynamic-security plugin
    does check subscriptions, so clients without a login are put in a group whose role
    refuses every shared subscription and every subscription to the activation topics.
    Everything else stays with ``mosquitto.acl`` (no matching rule here: the plugin
    defers), which still confines them to their own activation and reply topics.
    """

    def deny(topic: str) -> dict[str, Any]:
        return {"acltype": "subscribePattern", "topic": topic, "priority": 10, "allow": False}

    return [deny("$share/#"), deny(f"{prefix}/activate/#")]


def anonymous_guard_commands(prefix: str) -> list[dict[str, Any]]:
    """Dynamic-security commands that put :func:`anonymous_acls` in force on a live broker.

    For brokers whose dynamic-security file predates the guard: the bridge sends these
    when its admin connection opens. Creating what exists answers an error that the
    caller tolerates; the ACLs are then replaced so they match the current prefix.
    """
    return [
        {"command": "createRole", "rolename": ANONYMOUS_GROUP},
        {"command": "createGroup", "groupname": ANONYMOUS_GROUP},
        {"command": "addGroupRole", "groupname": ANONYMOUS_GROUP, "rolename": ANONYMOUS_GROUP},
        *(
            {"command": "addRoleACL", "rolename": ANONYMOUS_GROUP, **acl}
            for acl in anonymous_acls(prefix)
        ),
        {"command": "setAnonymousGroup", "groupname": ANONYMOUS_GROUP},
    ]


def dynsec_config(
    admin_username: str, admin_password: str, *, prefix: str = "provision"
) -> dict[str, Any]:
    """A dynamic-security file with one admin (what ``mosquitto_ctrl dynsec init`` writes),
    and the group of clients without a login (see :func:`anonymous_acls`)."""
    salt, digest = _pbkdf2(admin_password)

    def acl(acltype: str, topic: str) -> dict[str, Any]:
        return {"acltype": acltype, "topic": topic, "allow": True}

    control = "$CONTROL/dynamic-security/#"
    return {
        "clients": [
            {
                "username": admin_username,
                "textName": "provisioning bridge: manages device logins",
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": _PBKDF2_ITERATIONS,
                "roles": [{"rolename": "bridge-admin"}],
            }
        ],
        "roles": [
            {
                "rolename": "bridge-admin",
                "acls": [
                    acl("publishClientSend", control),
                    acl("publishClientReceive", control),
                    acl("subscribePattern", control),
                    acl("unsubscribePattern", "#"),
                ],
            },
            {"rolename": ANONYMOUS_GROUP, "acls": anonymous_acls(prefix)},
        ],
        "groups": [
            {"groupname": ANONYMOUS_GROUP, "roles": [{"rolename": ANONYMOUS_GROUP}]},
        ],
        "anonymousGroup": ANONYMOUS_GROUP,
        # Everything the plugin does not grant explicitly is left to mosquitto.acl: with
        # publishClientReceive allowed by default (mosquitto_ctrl's choice), the plugin
        # would let a device without a login read every reply it subscribes to.
        "defaultACLAccess": DEFAULT_ACL_ACCESS,
    }


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (credentials, hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_dynsec_config(
    path: Path, admin_username: str, admin_password: str, *, prefix: str = "provision"
) -> None:
    config = dynsec_config(admin_username, admin_password, prefix=prefix)
    write_private(path, json.dumps(config, indent=1))
