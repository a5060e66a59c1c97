"""How Mosquitto treats shared subscriptions, found by experiment (2.0.11 here).

- It keeps sending an offline member with a persistent session its round-robin share:
  the messages wait in that member's session and arrive when the same client id comes
  back. Nothing is lost, but that share is delayed.
- Across a broker restart (with persistence) it restores sessions and their plain
  subscriptions, but not their ``$share`` subscriptions.

The README's scale-out section builds on both (devices retry with the same request id).
"""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt

from bridge import mqtt
from bridge.config import parse_mqtt_url
from tests.faults.cluster import Broker

GROUP_TOPIC = "$share/g/exp/+"


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


async def test_broker_restart_restores_plain_but_not_shared_subscriptions(broker: Broker) -> None:
    """Mosquitto 2.0.11 persists sessions, but restores only their plain subscriptions.

    A ``$share`` subscription is gone after a restart until its client subscribes
    again; a request published in that gap reaches no bridge and is lost (the device's
    retry with the same request id then finds the resubscribed bridge). If this test
    starts failing after a broker upgrade, the README's scale-out section can say so.
    """
    endpoint = parse_mqtt_url(broker.url)
    async with mqtt.client(endpoint, "plain-member", persistent=True) as c:
        await c.subscribe("plain/+", qos=1)
    async with mqtt.client(endpoint, "shared-member", persistent=True) as c:
        await c.subscribe("$share/g/shared/+", qos=1)
    await broker.restart(down_seconds=0.2)
    async with mqtt.client(endpoint, "publisher", persistent=False) as pub:
        await pub.publish("plain/1", b"1", qos=1)
        await pub.publish("shared/1", b"1", qos=1)
    async with mqtt.client(endpoint, "plain-member", persistent=True) as c:
        assert await _drain(c, 1.0) == [1]  # session and subscription survived
    async with mqtt.client(endpoint, "shared-member", persistent=True) as c:
        assert await _drain(c, 1.0) == []  # the shared subscription did not
