"""The broker ceiling: a trivial service on the bridge's topics that answers without work.

It subscribes ``{prefix}/activate/+`` at QoS 1 with the bridge's own MQTT settings
(bridge.mqtt.client: MQTT 5, persistent session, the same in-flight window) and
publishes each request's payload back on ``{prefix}/reply/{client_id}`` at QoS 1 with a
Message Expiry, as the bridge does. No parsing, no database, no key. Replies are
published concurrently (up to ``--max-in-flight`` at once), like the bridge's workers.

Run: python bench/echo.py --mqtt mqtt://127.0.0.1:1883 --prefix provision
"""

from __future__ import annotations

import argparse
import asyncio

import aiomqtt

from bridge import mqtt
from bridge.config import parse_mqtt_url


async def serve(mqtt_url: str, prefix: str, client_id: str, max_in_flight: int) -> None:
    head = f"{prefix}/activate/"
    reply_head = f"{prefix}/reply/"
    properties = mqtt.reply_properties(600, None)  # same expiry as the bridge's replies
    gate = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    async with mqtt.client(
        parse_mqtt_url(mqtt_url), client_id, persistent=True, max_inflight=max_in_flight
    ) as client:
        await client.subscribe(f"{head}+", qos=1)
        print("subscribed", flush=True)

        async def reply(message: aiomqtt.Message) -> None:
            try:
                topic = reply_head + message.topic.value[len(head) :]
                await client.publish(
                    topic, message.payload, qos=1, retain=False, properties=properties
                )
            finally:
                gate.release()

        async for message in client.messages:
            await gate.acquire()  # bounded, as the bridge's queue is
            task = asyncio.create_task(reply(message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mqtt", required=True, help="broker URL")
    parser.add_argument("--prefix", default="provision", help="topic prefix")
    parser.add_argument("--client-id", default="bench-echo")
    parser.add_argument("--max-in-flight", type=int, default=64)
    cli = parser.parse_args()
    coro = serve(cli.mqtt, cli.prefix, cli.client_id, cli.max_in_flight)
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)
    except KeyboardInterrupt:
        pass
