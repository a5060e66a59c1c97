"""``bridge broker-files``: a compose broker's files, written from the bridge's settings.

The files are run for real by Mosquitto in docker/test-compose.sh; these tests hold their
content to what that run needs and to what must never be in them (a plaintext password).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import brokerfiles
from bridge.config import Settings, load_settings
from bridge.errors import ConfigError

BRIDGE_PASSWORD = "bridge-pw-6f1c2e"
ADMIN_PASSWORD = "admin-pw-90ab3d"
PLUGIN = Path("/usr/lib/mosquitto/mosquitto_dynamic_security.so")


def _settings(**extra: object) -> Settings:
    given: dict[str, object] = {
        "mqtt_url": f"mqtt://bridge:{BRIDGE_PASSWORD}@mosquitto:1883",
        "dynsec": True,
        "dynsec_username": "bridge-admin",
        "dynsec_password": ADMIN_PASSWORD,
    }
    return load_settings(**(given | extra))


def _pbkdf2_ok(password: str, salt_b64: str, hash_b64: str, iterations: int) -> bool:
    salt = base64.b64decode(salt_b64)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return digest == base64.b64decode(hash_b64)


def test_broker_files_for_compose(tmp_path: Path) -> None:
    written = brokerfiles.write_broker_files(
        _settings(topic_prefix="acme/prov"), tmp_path, plugin=PLUGIN, tls_dir=Path("/tls")
    )
    assert {p.name for p in written} == {
        "passwd",
        "mosquitto.acl",
        "mosquitto.conf",
        "dynamic-security.json",
    }
    conf = (tmp_path / "mosquitto.conf").read_text().splitlines()
    # Both listeners on every interface of the container; the plugin and certificates
    # where the broker's image has them; the shipped settings kept.
    assert "listener 1883 0.0.0.0" in conf
    assert "listener 8883 0.0.0.0" in conf
    assert f"plugin {PLUGIN}" in conf
    assert "certfile /tls/server.crt" in conf and "keyfile /tls/server.key" in conf
    for kept in ("retain_available false", "password_file passwd", "acl_file mosquitto.acl"):
        assert kept in conf
    acl = (tmp_path / "mosquitto.acl").read_text()
    assert "topic read acme/prov/activate/+" in acl and "\nuser bridge\n" in acl
    user, _, line = (tmp_path / "passwd").read_text().strip().partition(":")
    _, seven, iterations, salt, digest = line.split("$")
    assert (user, seven) == ("bridge", "7")
    assert _pbkdf2_ok(BRIDGE_PASSWORD, salt, digest, int(iterations))
    dynsec = json.loads((tmp_path / "dynamic-security.json").read_text())
    assert dynsec["anonymousGroup"] == "bridge-anonymous"
    admin = dynsec["clients"][0]
    assert admin["username"] == "bridge-admin"
    assert _pbkdf2_ok(ADMIN_PASSWORD, admin["salt"], admin["password"], admin["iterations"])
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_attack_broker_files_hold_no_plaintext_password(tmp_path: Path) -> None:
    brokerfiles.write_broker_files(_settings(), tmp_path, plugin=PLUGIN, tls_dir=Path("/tls"))
    for path in tmp_path.iterdir():
        text = path.read_text()
        assert BRIDGE_PASSWORD not in text, path
        assert ADMIN_PASSWORD not in text, path


def test_existing_dynamic_security_file_keeps_device_logins(tmp_path: Path) -> None:
    brokerfiles.write_broker_files(_settings(), tmp_path, plugin=PLUGIN, tls_dir=None)
    path = tmp_path / "dynamic-security.json"
    state = json.loads(path.read_text())
    device = {"username": "dev-1", "password": "x", "salt": "y", "iterations": 101}
    state["clients"].append(device)
    path.write_text(json.dumps(state))
    new_password = "rotated-admin-pw-77"
    brokerfiles.write_broker_files(
        _settings(dynsec_password=new_password), tmp_path, plugin=PLUGIN, tls_dir=None
    )
    again = json.loads(path.read_text())
    assert device in again["clients"]  # the bridge's device logins survive a re-run
    admin = next(c for c in again["clients"] if c["username"] == "bridge-admin")
    assert _pbkdf2_ok(new_password, admin["salt"], admin["password"], admin["iterations"])
    # No TLS directory: no TLS listener, and no certificate the broker could not find.
    conf = (tmp_path / "mosquitto.conf").read_text()
    assert "8883" not in conf and "certfile" not in conf
    assert not list(tmp_path.glob(".*.new"))  # replaced at once, nothing left behind


def test_broker_files_need_the_logins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BRIDGE_MQTT_URL"):
        brokerfiles.write_broker_files(load_settings(), tmp_path, plugin=None, tls_dir=None)
    no_user = load_settings(mqtt_url="mqtt://mosquitto:1883")
    with pytest.raises(ConfigError, match="no user and password"):
        brokerfiles.write_broker_files(no_user, tmp_path, plugin=None, tls_dir=None)
    no_admin = load_settings(mqtt_url=f"mqtt://bridge:{BRIDGE_PASSWORD}@mosquitto:1883")
    with pytest.raises(ConfigError, match="admin login"):
        brokerfiles.write_broker_files(no_admin, tmp_path, plugin=PLUGIN, tls_dir=None)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_broker_files_go_to_the_brokers_user(tmp_path: Path) -> None:
    written = brokerfiles.write_broker_files(
        _settings(), tmp_path / "broker", plugin=PLUGIN, tls_dir=None, owner=(10002, 10002)
    )
    for path in [tmp_path / "broker", *written]:
        assert (path.stat().st_uid, path.stat().st_gid) == (10002, 10002), path


def test_cli_reads_passwords_from_the_environment_only(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env |= {
        "BRIDGE_MQTT_URL": f"mqtt://bridge:{BRIDGE_PASSWORD}@mosquitto:1883",
        "BRIDGE_DYNSEC": "true",
        "BRIDGE_DYNSEC_USERNAME": "bridge-admin",
        "BRIDGE_DYNSEC_PASSWORD": ADMIN_PASSWORD,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "broker-files", str(tmp_path), f"--plugin={PLUGIN}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote passwd, mosquitto.acl, mosquitto.conf")
    assert BRIDGE_PASSWORD not in done.stdout + done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "bridge", "broker-files", str(tmp_path), "--owner", "mosquitto"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and "is not UID:GID" in bad.stderr
