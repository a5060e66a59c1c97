"""The embedded amqtt broker (MQTT 3.1.1 only) and our fallback from MQTT 5 to it.

Runs amqtt in the test's loop on a free port, so it never competes for 1883; the
fresh-machine test (test_fresh_install.py) covers the 1883 default end to end.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge import embedded, mqtt
from bridge.admin import Admin
from bridge.client import activate_device
from bridge.config import Settings, parse_mqtt_url
from bridge.errors import ConfigError
from tests.helpers import start_bridge
from tests.services import free_port

MAC = "00:1A:2B:3C:4D:5E"


async def test_serve_without_mosquitto_uses_amqtt_and_mqtt_311(
    settings: Settings,
    admin: Admin,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    # The embedded default, moved off 1883, with mosquitto nowhere on PATH.
    url = f"mqtt://127.0.0.1:{free_port()}"
    monkeypatch.setattr(embedded, "EMBEDDED_MQTT_URL", url)
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = settings.model_copy(update={"mqtt_url": None, "state_dir": tmp_path})
    caplog.set_level(logging.INFO, logger="bridge")
    running = await start_bridge(settings)
    try:
        endpoint = parse_mqtt_url(url)  # what `bridge activate` knows: just the address
        async with mqtt.connect(endpoint, "probe", persistent=False) as link:
            assert link.mqtt5 is False
        prefix = settings.topic_prefix
        first = await activate_device(
            endpoint, prefix=prefix, vendor="acme", model="thermo-1", identifier=MAC, seal=True
        )
        assert first.ok and first.key
        again = await activate_device(
            endpoint, prefix=prefix, vendor="acme", model="thermo-1", identifier=MAC
        )
        assert again.reply["code"] == "already_activated"
    finally:
        await running.halt()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("bridge")]
    assert "embedded MQTT broker (amqtt" in messages[0]
    subscribed = [r for r in caplog.records if getattr(r, "event", None) == "subscribed"]
    assert subscribed and subscribed[0].__dict__["mqtt"] == "3.1.1"


async def test_mosquitto_is_still_spoken_to_in_mqtt_5(settings: Settings) -> None:
    assert settings.mqtt_url is not None
    endpoint = parse_mqtt_url(settings.mqtt_url.get_secret_value())
    async with mqtt.connect(endpoint, "probe-5", persistent=False) as link:
        assert link.mqtt5 is True


async def test_amqtt_refuses_a_share_group(settings: Settings) -> None:
    settings = settings.model_copy(update={"share_group": "bridges"})
    with pytest.raises(ConfigError, match="shared subscriptions"):
        async with embedded._amqtt(settings, parse_mqtt_url(f"mqtt://127.0.0.1:{free_port()}")):
            pass
