"""A device's client id is its broker login: another device cannot take it (issue 13).

End to end, against the shipped Mosquitto configuration with the dynamic-security
plugin (the fixtures of test_broker_security.py), where the rule matters: the login
of an activated device keeps its key.
"""

from __future__ import annotations

import aiomqtt
import pytest

from bridge import mqtt
from bridge.admin import Admin
from bridge.config import Settings
from tests.helpers import RunningBridge, activate
from tests.integration.test_broker_security import (  # noqa: F401 (fixtures used by name)
    SecureBroker,
    device_settings,
    secure_bridge,
    secure_broker,
    secure_settings,
)

MAC_A, MAC_B = "02:00:00:00:05:0A", "02:00:00:00:05:0B"


async def test_attack_a_device_activating_with_another_devices_login_is_refused(
    admin: Admin,
    secure_broker: SecureBroker,  # noqa: F811
    device_settings: Settings,  # noqa: F811
    secure_bridge: RunningBridge,  # noqa: F811
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC_A, MAC_B])
    for mac in (MAC_A, MAC_B):
        await admin.claim("acme", "thermo-1", mac, owner="alice")
    first = await activate(device_settings, MAC_A, client_id="dev-a", seal=True)
    assert first.ok and first.key, first.reply

    taken = await activate(device_settings, MAC_B, client_id="dev-a", seal=True)

    assert taken.reply["code"] == "client_id_reserved"
    assert taken.reply["message"] == (
        "This client id is the broker login of another device; "
        "each device must activate with a client id of its own."
    )
    assert taken.key is None
    assert (await admin.show("acme", "thermo-1", MAC_B)).state == "claimed"
    # Device A's login still opens with A's key: its password was not replaced.
    async with mqtt.client(secure_broker.endpoint("dev-a", first.key), "dev-a", persistent=False):
        pass
    own = await activate(device_settings, MAC_B, client_id="dev-b", seal=True)
    assert own.ok, own.reply
    with pytest.raises(aiomqtt.MqttError):  # and B's key opens only B's login
        async with mqtt.client(secure_broker.endpoint("dev-a", own.key), "dev-a", persistent=False):
            pass
