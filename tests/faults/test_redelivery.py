"""A SIGKILLed bridge loses no request it had taken but not answered.

The bridge acknowledges a request to the broker only after answering it, and asks
for no more unacknowledged requests than it can hold (Receive Maximum). So when it
is killed with a backlog in hand, the broker still holds every unanswered request in
the bridge's persistent session and sends them again when the same client id is
back. The devices here publish once and never retry: every one must be answered.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bridge import mqtt, protocol
from bridge.config import parse_mqtt_url
from bridge.keys import KeyHasher
from tests.faults.cluster import TEST_SECRET, BridgeProcess, Broker, Postgres, mac_model

DEVICES = 200


def _mac(n: int) -> str:
    return f"0200000D{n:04X}"


@pytest.mark.slow
async def test_requests_in_hand_when_killed_are_delivered_again(
    fault_postgres: Postgres, broker: Broker, tmp_path: Path
) -> None:
    url, prefix = await mac_model(fault_postgres, "redeliver", [_mac(n) for n in range(DEVICES)])
    # Two workers: a backlog builds up, and the kill lands in the middle of it.
    bridge = BridgeProcess(
        client_id="bridge-redeliver",
        database_url=url,
        mqtt_url=broker.url,
        prefix=prefix,
        share_group=None,
        workdir=tmp_path,
        extra_env={"BRIDGE_MAX_IN_FLIGHT": "2"},
    )
    endpoint = parse_mqtt_url(broker.url)
    answered: dict[str, dict[str, Any]] = {}
    bridge.start()
    try:
        await bridge.wait_subscribed()
        async with AsyncExitStack() as stack:
            monitor = await stack.enter_async_context(
                mqtt.client(endpoint, "monitor", persistent=False)
            )
            await monitor.subscribe(f"{prefix}/reply/+", qos=1)

            async def collect() -> None:
                async for message in monitor.messages:
                    assert isinstance(message.payload, bytes)
                    answered[message.topic.value.rsplit("/", 1)[1]] = json.loads(message.payload)

            collector = asyncio.create_task(collect())
            devices = []
            for n in range(DEVICES):
                cid = f"once-{n:03d}"
                c = await stack.enter_async_context(mqtt.client(endpoint, cid, persistent=False))
                devices.append((n, cid, c))
            for n, cid, c in devices:  # each publishes once and never retries
                body = {
                    "request_id": f"r{n}",
                    "vendor": "acme",
                    "model": "redeliver-1",
                    "identifier": _mac(n),
                }
                await c.publish(protocol.activate_topic(prefix, cid), json.dumps(body).encode(), 1)
            async with asyncio.timeout(30):
                while len(answered) < 20:  # noqa: ASYNC110 (a counter, polled)
                    await asyncio.sleep(0.005)
            bridge.kill()
            at_kill = len(answered)
            bridge.start()
            await bridge.wait_subscribed()
            async with asyncio.timeout(60):
                while len(answered) < DEVICES:  # noqa: ASYNC110 (a counter, polled)
                    await asyncio.sleep(0.05)
            collector.cancel()
    finally:
        await asyncio.to_thread(bridge.terminate)
    assert at_kill < DEVICES  # the kill did land with requests still unanswered
    assert all(reply["status"] == "ok" for reply in answered.values()), answered
    hasher = KeyHasher(TEST_SECRET.encode())
    conn = await asyncpg.connect(url)
    try:
        rows = {
            r["identifier"]: r["key_hash"]
            for r in await conn.fetch("SELECT identifier, key_hash FROM devices")
        }
    finally:
        await conn.close()
    for cid, reply in answered.items():
        assert hasher.verify(reply["key"], rows[_mac(int(cid.split("-")[1]))])
