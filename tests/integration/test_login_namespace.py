"""Attacks on the broker login namespace, on a real Mosquitto with the shipped configuration
and the dynamic-security plugin, and a real PostgreSQL.

A device's client id becomes the username of its broker login. These tests try to take
an operator's login with it (the dynamic-security admin, the bridge's own user, a login
an operator created, the bridge's client id) and to take an activated device's key by
connecting with its client id. Each must change nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge import brokerconf, keys, mqtt
from bridge.admin import Admin
from bridge.config import MqttEndpoint, Settings
from bridge.dynsec import CONTROL_TOPIC, RESPONSE_TOPIC, DynSec
from bridge.embedded import DYNSEC_ADMIN, repair_dynsec_file
from bridge.errors import BrokerAdminError
from bridge.logins import LoginNamespace
from tests.helpers import activate, raw_exchange, start_bridge
from tests.integration import test_broker_security as secure
from tests.services import free_port, wait_for_port

# The module broker of test_broker_security (shipped configuration, TLS, dynamic security).
secure_broker = secure.secure_broker
secure_settings = secure.secure_settings
device_settings = secure.device_settings
secure_bridge = secure.secure_bridge
SecureBroker = secure.SecureBroker

MAC_A = "00:1A:2B:3C:4D:5E"
MAC_B = "00:1A:2B:3C:4D:5F"


async def _claimed(admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC_A, MAC_B])
    for mac in (MAC_A, MAC_B):
        await admin.claim("acme", "thermo-1", mac, owner="alice")


async def _control(broker: SecureBroker, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    """Commands to the plugin as its admin, the way an operator's mosquitto_ctrl sends them."""
    endpoint = broker.endpoint("bridge-admin", broker.admin_password)
    async with (
        asyncio.timeout(10),
        mqtt.client(endpoint, f"ops-{secrets.token_hex(3)}", persistent=False) as c,
    ):
        await c.subscribe(RESPONSE_TOPIC, qos=1)
        await c.publish(CONTROL_TOPIC, json.dumps({"commands": list(commands)}), qos=1)
        async for message in c.messages:
            assert isinstance(message.payload, bytes)
            responses: list[dict[str, Any]] = json.loads(message.payload)["responses"]
            return responses
    raise AssertionError("no answer from the plugin")


async def _client(broker: SecureBroker, username: str) -> dict[str, Any] | None:
    (response,) = await _control(broker, {"command": "getClient", "username": username})
    client = response.get("data", {}).get("client")
    return client if isinstance(client, dict) else None


async def _opens(broker: SecureBroker, username: str, password: str | None, client_id: str) -> bool:
    try:
        async with mqtt.client(broker.endpoint(username, password), client_id, persistent=False):
            return True
    except aiomqtt.MqttError:
        return False


async def _state(admin: Admin, mac: str) -> tuple[str, str | None]:
    row = await admin.show("acme", "thermo-1", mac)
    return row.state, row.key_id


async def _refused_as_reserved(settings: Settings, client_id: str) -> dict[str, Any]:
    result = await activate(settings, MAC_A, client_id=client_id, seal=True)
    assert result.key is None
    assert result.reply["code"] == "client_id_reserved", result.reply
    message = result.reply["message"]
    assert f"The client id {client_id!r} is reserved for" in message
    assert message.endswith("give the device a client id of its own.")
    assert message.count(".") == 1  # one sentence
    return result.reply


async def test_attack_client_id_of_the_dynsec_admin_takes_no_login(
    admin: Admin,
    secure_broker: SecureBroker,
    device_settings: Settings,
    secure_bridge: object,
) -> None:
    """Was: the activation succeeded and its key became the admin's password."""
    await _claimed(admin)
    before = await _client(secure_broker, "bridge-admin")
    await _refused_as_reserved(device_settings, "bridge-admin")
    assert await _state(admin, MAC_A) == ("claimed", None)  # no key issued
    assert await _client(secure_broker, "bridge-admin") == before  # no broker change
    assert await _opens(secure_broker, "bridge-admin", secure_broker.admin_password, "ops-1")
    # The bridge still manages device logins: the real device activates and logs in.
    real = await activate(device_settings, MAC_A, client_id="thermo-a", seal=True)
    assert real.ok and real.key
    assert await _opens(secure_broker, "thermo-a", real.key, "thermo-a")


async def test_attack_client_id_of_the_bridges_own_user_takes_no_login(
    admin: Admin,
    secure_broker: SecureBroker,
    device_settings: Settings,
    secure_bridge: object,
) -> None:
    """Was: a dynamic-security client 'bridge' shadowed the bridge's user, across restarts."""
    await _claimed(admin)
    for client_id in ("bridge", "BRIDGE"):
        await _refused_as_reserved(device_settings, client_id)
    assert await _client(secure_broker, "bridge") is None
    assert await _opens(secure_broker, "bridge", secure_broker.bridge_password, "ops-2")
    assert await _state(admin, MAC_A) == ("claimed", None)


async def test_attack_client_id_under_the_bridges_own_client_id_takes_no_login(
    admin: Admin,
    secure_settings: Settings,
    device_settings: Settings,
    secure_bridge: object,
) -> None:
    """Names under the bridge's client id (its admin connections use them). The bridge's
    exact client id is refused too (tests/unit/test_logins.py), but connecting with it
    at all takes the bridge's MQTT session over, before any request: the broker's matter."""
    await _claimed(admin)
    own = secure_settings.mqtt_client_id
    await _refused_as_reserved(device_settings, f"{own}-admin-1a2b3c")
    assert await _state(admin, MAC_A) == ("claimed", None)


async def test_attack_client_id_of_an_operator_created_login_takes_no_login(
    admin: Admin,
    secure_broker: SecureBroker,
    secure_settings: Settings,
    device_settings: Settings,
) -> None:
    """A login an operator made in the plugin by hand (mosquitto_ctrl) is learned at start."""
    await _claimed(admin)
    password = secrets.token_urlsafe(12)
    await _control(
        secure_broker,
        {"command": "createClient", "username": "grafana-ops", "password": password},
    )
    running = await start_bridge(secure_settings)
    try:
        # The bridge reads the broker's logins as it starts (one round trip, beside the
        # subscription); a moment later the name is known and refused before the database.
        await asyncio.sleep(1.0)
        await _refused_as_reserved(device_settings, "grafana-ops")
    finally:
        await running.halt()
    assert await _state(admin, MAC_A) == ("claimed", None)  # no key issued
    assert await _opens(secure_broker, "grafana-ops", password, "grafana-ops")
    client = await _client(secure_broker, "grafana-ops")
    assert client is not None and not client.get("disabled") and not client.get("roles")
    await _control(secure_broker, {"command": "deleteClient", "username": "grafana-ops"})


async def test_attack_client_id_in_bridge_reserved_logins_takes_no_login(
    admin: Admin, secure_settings: Settings, device_settings: Settings
) -> None:
    """A login the broker's password file holds, which the bridge cannot read: declared."""
    await _claimed(admin)
    declared = secure_settings.model_copy(update={"reserved_logins": "telegraf, nodered"})
    running = await start_bridge(declared)
    try:
        await _refused_as_reserved(device_settings, "nodered")
    finally:
        await running.halt()
    assert await _state(admin, MAC_A) == ("claimed", None)


async def test_attack_a_race_past_the_check_leaves_the_operator_login_untouched(
    secure_broker: SecureBroker,
) -> None:
    """An operator login created after the bridge last looked: upsert and disable refuse it."""
    name = f"late-ops-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    namespace = LoginNamespace([], bridge_client_id="bridge-test")
    endpoint = secure_broker.endpoint("bridge-admin", secure_broker.admin_password)
    async with DynSec(endpoint, client_id="race-dynsec", namespace=namespace) as dynsec:
        await dynsec.refresh()
        assert namespace.refusal(name) is None  # not there yet
        await _control(
            secure_broker, {"command": "createClient", "username": name, "password": password}
        )
        with pytest.raises(BrokerAdminError, match="left untouched"):
            await dynsec.upsert_device(name, "f" * 40)
        assert namespace.refusal(name) is not None  # learned: the next request is refused
        await dynsec.disable_device(name)  # e.g. a device row that names it: left alone
    assert await _opens(secure_broker, name, password, "anything")
    assert not await _opens(secure_broker, name, "f" * 40, name)
    client = await _client(secure_broker, name)
    assert client is not None and not client.get("disabled")
    await _control(secure_broker, {"command": "deleteClient", "username": name})


async def test_attack_a_device_made_login_under_the_bridges_name_is_deleted_at_start(
    admin: Admin,
    secure_broker: SecureBroker,
    secure_settings: Settings,
    device_settings: Settings,
) -> None:
    """Repair of a broker attacked before this fix: the login the old code made for client
    id 'bridge' (its device role, no textName) locks the bridge out until it is deleted."""
    await _claimed(admin)
    await _control(
        secure_broker,
        {"command": "createRole", "rolename": "device:bridge"},
        {
            "command": "createClient",
            "username": "bridge",
            "clientid": "bridge",
            "password": "0" * 40,
            "roles": [{"rolename": "device:bridge"}],
        },
    )
    assert not await _opens(secure_broker, "bridge", secure_broker.bridge_password, "ops-3")
    running = await start_bridge(secure_settings)  # ready: it got its own login back
    try:
        assert await _client(secure_broker, "bridge") is None
        result = await activate(device_settings, MAC_B, client_id="thermo-b", seal=True)
        assert result.ok
    finally:
        await running.halt()
    assert await _opens(secure_broker, "bridge", secure_broker.bridge_password, "ops-4")


def test_attack_a_taken_admin_password_is_reset_in_the_embedded_broker_file(
    tmp_path: Path,
) -> None:
    """Repair of an embedded broker attacked before this fix: the admin's password was a
    device's key, and a device login shadowed 'bridge'. `serve` repairs the file before
    mosquitto reads it; then the admin's own password opens the broker again."""
    plugin = brokerconf.find_dynsec_plugin()
    assert plugin is not None, "mosquitto's dynamic-security plugin is not installed"
    admin_password = secrets.token_urlsafe(16)
    taken = brokerconf.dynsec_config(DYNSEC_ADMIN, "device-key-" + "a" * 29)
    shadow = brokerconf.dynsec_config("bridge", "0" * 40)["clients"][0]
    shadow.pop("textName")
    shadow["roles"] = [{"rolename": "device:bridge"}]
    taken["clients"].append(shadow)
    taken["roles"].append({"rolename": "device:bridge", "acls": []})
    path = tmp_path / "dynamic-security.json"
    brokerconf.write_private(path, json.dumps(taken))

    repairs = repair_dynsec_file(path, admin_password, {"bridge", DYNSEC_ADMIN})
    assert len(repairs) == 2
    assert repair_dynsec_file(path, admin_password, {"bridge", DYNSEC_ADMIN}) == []
    repaired = json.loads(path.read_text())
    assert [c["username"] for c in repaired["clients"]] == [DYNSEC_ADMIN]
    assert "device:bridge" not in {r["rolename"] for r in repaired["roles"]}

    port = free_port()
    bridge_password = secrets.token_urlsafe(16)
    brokerconf.write_private(
        tmp_path / "passwd", brokerconf.password_line("bridge", bridge_password) + "\n"
    )
    (tmp_path / "mosquitto.acl").write_text(brokerconf.shipped("mosquitto.acl").read_text())
    conf = brokerconf.render_conf(
        brokerconf.shipped("mosquitto.conf").read_text(),
        plain_port=port,
        tls_port=None,
        bind="127.0.0.1",
        plugin=plugin,
        run_as=pwd.getpwuid(os.geteuid()).pw_name,
    ).replace("persistence true", "persistence false")
    (tmp_path / "mosquitto.conf").write_text(conf)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with (tmp_path / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, "-c", "mosquitto.conf"], cwd=tmp_path, stdout=log, stderr=log
        )
    try:
        wait_for_port("127.0.0.1", port, proc, "mosquitto")

        async def logins() -> tuple[bool, bool]:
            results = []
            for user, password in ((DYNSEC_ADMIN, admin_password), ("bridge", bridge_password)):
                endpoint = MqttEndpoint("127.0.0.1", port, False, user, password)
                try:
                    async with mqtt.client(endpoint, f"t-{user}", persistent=False):
                        results.append(True)
                except aiomqtt.MqttError:
                    results.append(False)
            return results[0], results[1]

        assert asyncio.run(logins()) == (True, True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_attack_takeover_of_an_activated_devices_client_id_yields_no_key(
    admin: Admin,
    secure_broker: SecureBroker,
    device_settings: Settings,
    secure_bridge: object,
) -> None:
    """Another client connects with an activated device's client id, without its key, and
    asks again: with the device's request id (the idempotent retry), with a new one, and
    with a public key of its own. It never sees the key, and the device's login stands."""
    await _claimed(admin)
    device = await activate(
        device_settings, MAC_A, client_id="thermo-t", request_id="boot-1", seal=True
    )
    assert device.ok and device.key
    attacker_private = X25519PrivateKey.generate()
    attacker_public = base64.b64encode(attacker_private.public_key().public_bytes_raw()).decode()
    replies = []
    for request_id, public_key in (("boot-1", attacker_public), ("boot-2", attacker_public)):
        request = {
            "v": 1,
            "request_id": request_id,
            "vendor": "acme",
            "model": "thermo-1",
            "identifier": MAC_A,
            "public_key": public_key,
        }
        replies.append(
            await raw_exchange(device_settings, json.dumps(request).encode(), client_id="thermo-t")
        )
    replay, fresh = replies
    assert fresh["code"] == "already_activated"
    # The retry gets the stored reply: sealed to the device's key, not the attacker's.
    assert replay["status"] == "ok" and "key" not in replay
    with pytest.raises(ValueError, match="does not open with this private key"):
        keys.unseal(attacker_private, replay["sealed_key"], "boot-1")
    for reply in replies:
        assert device.key not in json.dumps(reply)
    # Taking the login itself needs the key: no password, a wrong one, another's username.
    for username, password in (("thermo-t", None), ("thermo-t", "0" * 40), ("bridge", "x")):
        assert not await _opens(secure_broker, username, password, "thermo-t")
    assert await _opens(secure_broker, "thermo-t", device.key, "thermo-t")
