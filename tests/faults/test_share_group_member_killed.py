"""A SIGKILLed member of a share group holds back no request of the live members.

Mosquitto (2.0.11) keeps handing an offline member with a persistent session its
round-robin share of the requests (tests/faults/test_shared_subscription.py). A bridge in
a share group therefore connects with a session that ends with its connection: once one
of two bridges is killed (and stays dead, as a container killed for good or replaced by
one with another client id), every request goes to the live one. Devices here publish
once and never retry: each must be answered. With persistent sessions, half would wait
for the dead bridge.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.client import activate_device
from bridge.config import parse_mqtt_url
from tests.faults.cluster import BridgeProcess, Broker, Postgres, mac_model

DEVICES = 8


@pytest.mark.slow
async def test_killed_member_of_a_share_group_holds_back_no_request(
    fault_postgres: Postgres, broker: Broker, tmp_path: Path
) -> None:
    macs = [f"0200000E{n:04X}" for n in range(DEVICES)]
    url, prefix = await mac_model(fault_postgres, "sharekill", macs, plaintext_keys=False)
    bridges = [
        BridgeProcess(
            client_id=f"bridge-sharekill-{n}",
            database_url=url,
            mqtt_url=broker.url,
            prefix=prefix,
            share_group="provisioners",
            workdir=tmp_path,
        )
        for n in range(2)
    ]
    endpoint = parse_mqtt_url(broker.url)
    for bridge in bridges:
        bridge.start()
    try:
        for bridge in bridges:
            await bridge.wait_subscribed()
        bridges[0].kill()
        await asyncio.sleep(0.5)  # the broker sees the connection close
        results = []
        for n, mac in enumerate(macs):  # one attempt each, no retry
            try:
                result = await activate_device(
                    endpoint,
                    prefix=prefix,
                    vendor="acme",
                    model="sharekill-1",
                    identifier=mac,
                    client_id=f"sharekill-dev-{n}",
                    timeout=5.0,
                )
            except TimeoutError:
                results.append("timeout")
            else:
                results.append(str(result.reply.get("status")))
    finally:
        await asyncio.to_thread(bridges[1].terminate)
        if bridges[0].proc is not None and bridges[0].proc.poll() is None:
            bridges[0].kill()
    assert results == ["ok"] * DEVICES
