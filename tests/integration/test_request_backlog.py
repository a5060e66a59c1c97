"""A backlog of requests in the request connection's incoming queue stays small.

Mosquitto 2.0.11 keeps to the bridge's Receive Maximum only until the first PUBACK and
then sends its whole queue for the session; aiomqtt holds whatever arrives until the
service reads it. Each held message must cost about its own size, not paho's constant
tables copied into it (docs/performance.md, "Memory").
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import tracemalloc

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import mqtt
from bridge.config import parse_mqtt_url

BACKLOG = 2_000
#: Bytes a held request may cost beyond its payload. paho's own copy of its tables in
#: every message costs several times this; the message, its topic and its parsed
#: properties fit well inside.
PER_MESSAGE_LIMIT = 1_500


async def test_a_backlog_of_requests_costs_little_memory_and_keeps_its_properties(
    mqtt_url: str,
) -> None:
    endpoint = parse_mqtt_url(mqtt_url)
    topic = f"test-{secrets.token_hex(5)}/provision/activate"
    payload = b'{"v":1,"request_id":"r","vendor":"acme","model":"m","identifier":"x"}'
    tracemalloc.start()
    try:
        # A Receive Maximum above the backlog: the broker sends all of it unacknowledged,
        # as 2.0.11 does after the first PUBACK whatever the Receive Maximum.
        async with (
            mqtt.connect(
                endpoint,
                f"backlog-{secrets.token_hex(4)}",
                persistent=False,
                manual_ack=True,
                max_inflight=BACKLOG + 10,
            ) as link,
            mqtt.connect(endpoint, f"sender-{secrets.token_hex(4)}", persistent=False) as sender,
        ):
            await mqtt.subscribe_requests(link.client, f"{topic}/+", mqtt5=link.mqtt5)
            gc.collect()
            before, _ = tracemalloc.get_traced_memory()
            for n in range(BACKLOG):
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.CorrelationData = n.to_bytes(4, "big")
                await sender.client.publish(
                    f"{topic}/dev{n}", payload, qos=1, properties=props, timeout=10
                )
            async with asyncio.timeout(30):
                while len(link.client.messages) < BACKLOG:  # noqa: ASYNC110 (aiomqtt's queue, polled)
                    await asyncio.sleep(0.05)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
            per_message = (after - before) / BACKLOG - len(payload)
            assert per_message < PER_MESSAGE_LIMIT, f"{per_message:.0f} B per held request"

            # What the service reads of a held request is all there, and its
            # properties still work as paho's (printed, packed, compared).
            seen = []
            async for message in link.client.messages:
                seen.append(mqtt.correlation_data(message))
                assert isinstance(message.properties, Properties)
                fresh = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                fresh.CorrelationData = seen[-1]
                assert message.properties.pack() == fresh.pack()  # type: ignore[no-untyped-call]
                assert "CorrelationData" in str(message.properties)
                mqtt.acknowledge(link.client, message)
                if len(seen) == BACKLOG:
                    break
            assert seen == [n.to_bytes(4, "big") for n in range(BACKLOG)]
    finally:
        tracemalloc.stop()
