"""How Mosquitto treats a shared subscription whose member is offline, found by experiment.

Mosquitto (2.0.11 here) keeps sending an offline member with a persistent session its
round-robin share: the messages wait in that member's session and arrive when the same
client id comes back. Nothing is lost, but that share is delayed; the README's
scale-out section builds on this (devices retry with the same request id).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiomqtt
import pytest

from bridge import mqtt
from bridge.config import parse_mqtt_url
from tests.faults.cluster import Broker

GROUP_TOPIC = "$share/g/exp/+"


@pytest.fixture
def broker() -> Any:
    b = Broker()
    b.start()
    yield b
    b.close()


async def _drain(client: aiomqtt.Client, seconds: float) -> list[int]:
    got: list[int] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append(int(message.payload))
    return got


async def test_offline_member_of_a_share_group_gets_its_share_when_it_returns(
    broker: Broker,
) -> None:
    endpoint = parse_mqtt_url(broker.url)
    for member in ("member-a", "member-b"):
        async with mqtt.client(endpoint, member, persistent=True) as c:
            await c.subscribe(GROUP_TOPIC, qos=1)
    async with mqtt.client(endpoint, "member-a", persistent=True) as online:  # b is offline
        async with mqtt.client(endpoint, "publisher", persistent=False) as pub:
            for n in range(20):
                await pub.publish(f"exp/{n}", str(n).encode(), qos=1)
        got_online = await _drain(online, 1.0)
    async with mqtt.client(endpoint, "member-b", persistent=True) as returning:
        got_returning = await _drain(returning, 1.0)
    # Round robin ignores presence: half went to the offline member's session...
    assert 0 < len(got_online) < 20
    assert len(got_returning) == 20 - len(got_online)
    # ...and none was lost or duplicated.
    assert sorted(got_online + got_returning) == list(range(20))
