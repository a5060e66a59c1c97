"""A single bridge reserves its own client id against devices, not a family it does not
have: only `serve --workers N` makes `<id>-w<i>` ids (bridge.workers.worker_settings),
so only its workers reserve `<id>-…`. Before, any bridge whose own id ended in `-w<digits>`
(say `site-w1`) refused every device client id starting `site-`. Against the shipped
Mosquitto configuration with dynamic security (the fixtures of test_broker_security.py).
"""

from __future__ import annotations

from bridge.admin import Admin
from bridge.config import Settings
from tests.helpers import activate, start_bridge
from tests.integration.test_broker_security import (  # noqa: F401 (fixtures used by name)
    SecureBroker,
    device_settings,
    secure_broker,
    secure_settings,
)

MACS = ["02:00:00:00:09:0A", "02:00:00:00:09:0B", "02:00:00:00:09:0C"]


async def test_a_single_bridge_named_like_a_worker_answers_devices_of_its_site(
    admin: Admin,
    secure_broker: SecureBroker,  # noqa: F811
    secure_settings: Settings,  # noqa: F811
    device_settings: Settings,  # noqa: F811
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", MACS)
    for mac in MACS:
        await admin.claim("acme", "thermo-1", mac, owner="alice")
    single = secure_settings.model_copy(update={"client_id": "site-w1"})
    bridge = await start_bridge(single)
    try:
        served = await activate(device_settings, MACS[0], client_id="site-sensor-7", seal=True)
        assert served.ok, served.reply
        assert served.key is not None
        # Its own ids stay reserved, as for any bridge (`<id>-…`; a device connecting
        # under `site-w1` itself would take the running bridge's session).
        for mac, taken in zip(MACS[1:], ("site-w1-sensor", "SITE-W1-x"), strict=True):
            tried = await activate(device_settings, mac, client_id=taken, seal=True)
            assert tried.reply.get("code") == "client_id_reserved", (taken, tried.reply)
            assert tried.key is None
    finally:
        await bridge.halt()
