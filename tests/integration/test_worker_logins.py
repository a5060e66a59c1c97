"""`bridge serve --workers N`: no device may take a worker's client id (issue 15).

Each worker connects as `<client id>-w<i>`; Mosquitto hands a session to whoever
connects with its client id. A device whose request reaches worker 1 must not get a
broker login named after worker 0 (or the bridge's own id): with it, it could connect
under that client id, kick worker 0 and take its queued requests. Against the shipped
Mosquitto configuration with dynamic security (the fixtures of test_broker_security.py).
"""

from __future__ import annotations

import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.workers import worker_settings
from tests.helpers import activate, start_bridge
from tests.integration.test_broker_security import (  # noqa: F401 (fixtures used by name)
    SecureBroker,
    device_settings,
    secure_broker,
    secure_settings,
)

MACS = ["02:00:00:00:08:0A", "02:00:00:00:08:0B", "02:00:00:00:08:0C"]


@pytest.mark.parametrize("configured", ["bridge-red", None])
async def test_attack_device_takes_another_workers_client_id(
    admin: Admin,
    secure_broker: SecureBroker,  # noqa: F811
    secure_settings: Settings,  # noqa: F811
    device_settings: Settings,  # noqa: F811
    configured: str | None,
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", MACS)
    for mac in MACS:
        await admin.claim("acme", "thermo-1", mac, owner="mallory")
    base = secure_settings.model_copy(update={"client_id": configured})
    root = base.mqtt_client_id
    worker_1 = await start_bridge(worker_settings(base, 1))
    try:
        for mac, taken in zip(MACS, (f"{root}-w0", root, f"{root}-w0-dynsec"), strict=True):
            tried = await activate(device_settings, mac, client_id=taken, seal=True)
            assert tried.reply.get("code") == "client_id_reserved", (taken, tried.reply)
            assert tried.key is None
    finally:
        await worker_1.halt()
