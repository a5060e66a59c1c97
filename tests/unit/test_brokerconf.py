"""Rendering the shipped broker configuration (no I/O beyond reading the shipped files)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from bridge import brokerconf

CONF = brokerconf.shipped("mosquitto.conf").read_text()


def test_the_shipped_conf_has_acl_password_file_plugin_and_a_tls_listener() -> None:
    options = [line.split()[0] for line in CONF.splitlines() if line and line[0] != "#"]
    for option in ("acl_file", "password_file", "plugin", "certfile", "keyfile"):
        assert option in options
    assert "allow_anonymous true" in CONF  # devices activate before they have a key


def test_render_with_tls_and_plugin() -> None:
    out = brokerconf.render_conf(
        CONF, plain_port=1999, tls_port=2999, bind="127.0.0.1", plugin=Path("/p/dyn.so")
    )
    assert "listener 1999 127.0.0.1" in out and "listener 2999 127.0.0.1" in out
    assert "certfile tls/server.crt" in out and "plugin /p/dyn.so" in out
    assert "plugin_opt_config_file dynamic-security.json" in out
    assert not [line for line in out.splitlines() if line.startswith("user ")]


def test_render_without_tls_and_plugin_drops_their_lines() -> None:
    out = brokerconf.render_conf(
        CONF, plain_port=1883, tls_port=None, bind="127.0.0.1", plugin=None, run_as="me"
    )
    options = [line.split()[0] for line in out.splitlines() if line and line[0] != "#"]
    for gone in ("certfile", "keyfile", "tls_version", "plugin", "plugin_opt_config_file"):
        assert gone not in options
    assert [line for line in out.splitlines() if line.startswith("listener")] == [
        "listener 1883 127.0.0.1"
    ]
    assert out.rstrip().endswith("user me")


def test_password_line_is_mosquittos_pbkdf2_format() -> None:
    user, rest = brokerconf.password_line("bridge", "pw").split(":", 1)
    _, seven, iterations, salt, digest = rest.split("$")
    assert (user, seven, iterations) == ("bridge", "7", "101")
    expected = hashlib.pbkdf2_hmac("sha512", b"pw", base64.b64decode(salt), 101)
    assert base64.b64decode(digest) == expected


def test_dynsec_defaults_leave_devices_without_a_login_to_the_acl_file() -> None:
    # Long and with characters base64 lacks: "pw" turned up in a random salt or hash.
    password = "not in the file: admin pass phrase!"
    config = brokerconf.dynsec_config("admin", password)
    assert config["defaultACLAccess"]["publishClientReceive"] is False
    assert config["defaultACLAccess"]["subscribe"] is False
    assert password not in str(config["clients"])
