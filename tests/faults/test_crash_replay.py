"""Crash between commit and publish: the retry with the same request id gets the same key.

A device publishes its request and goes away before any reply can reach it; the moment
the activation is committed, the bridge process is SIGKILLed. A new bridge process
(same client id) then answers the device's retry, with the same request id, from the
encrypted stored reply: the same key, which the database verifies, and no second key.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import pytest

from bridge import mqtt, protocol
from bridge.client import activate_device
from bridge.config import parse_mqtt_url
from bridge.keys import KeyHasher
from tests.faults.cluster import TEST_SECRET, BridgeProcess, Broker, Postgres, mac_model

MAC = "02:00:00:00:C0:01"


async def _committed(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        state = await conn.fetchval("SELECT state FROM devices WHERE identifier = '02000000C001'")
    finally:
        await conn.close()
    return bool(state == "activated")


@pytest.mark.slow
async def test_sigkill_after_commit_then_retry_gets_the_same_key(
    fault_postgres: Postgres, broker: Broker, tmp_path: Path
) -> None:
    url, prefix = await mac_model(fault_postgres, "crash", [MAC])
    bridge = BridgeProcess(
        client_id="bridge-crash",
        database_url=url,
        mqtt_url=broker.url,
        prefix=prefix,
        share_group="provisioners",
        workdir=tmp_path,
    )
    endpoint = parse_mqtt_url(broker.url)
    request = {"request_id": "once", "vendor": "acme", "model": "crash-1", "identifier": MAC}
    bridge.start()
    try:
        await bridge.wait_subscribed()
        # The device publishes and is gone before a reply could reach it.
        async with mqtt.client(endpoint, "device-crash", persistent=False) as device:
            await device.publish(
                protocol.activate_topic(prefix, "device-crash"), json.dumps(request).encode(), qos=1
            )
        deadline = time.monotonic() + 10
        while not await _committed(url):
            assert time.monotonic() < deadline, "the activation was never committed"
            await asyncio.sleep(0.01)
        bridge.kill()  # right after the commit: the reply is lost whether published or not

        bridge.start()
        await bridge.wait_subscribed()
        retry = await activate_device(
            endpoint,
            prefix=prefix,
            vendor="acme",
            model="crash-1",
            identifier=MAC,
            client_id="device-crash",
            request_id="once",
        )
        fresh = await activate_device(
            endpoint, prefix=prefix, vendor="acme", model="crash-1", identifier=MAC
        )
    finally:
        exit_code = await asyncio.to_thread(bridge.terminate)
    assert exit_code == 0
    assert retry.ok and retry.key, retry.reply
    assert fresh.reply["code"] == "already_activated"  # a new request id: no second key
    conn = await asyncpg.connect(url)
    try:
        key_hash = await conn.fetchval(
            "SELECT key_hash FROM devices WHERE identifier = '02000000C001'"
        )
        outcomes = await conn.fetch(
            "SELECT code, detail FROM audit_log WHERE action = 'activate' ORDER BY id"
        )
    finally:
        await conn.close()
    assert KeyHasher(TEST_SECRET.encode()).verify(retry.key, key_hash)
    assert [(r["code"], r["detail"]) for r in outcomes] == [
        ("ok", None),
        ("ok", "replayed the stored reply"),
        ("already_activated", None),
    ]
