"""Fault suite (2): a hundred clients race for one identifier across three replicas."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import aiomqtt
import asyncpg
import pytest

from bridge import mqtt, protocol
from bridge.config import parse_mqtt_url
from bridge.keys import KeyHasher
from tests.faults.cluster import TEST_SECRET, Broker, Postgres, mac_model, replica_set

CLIENTS = 100
MAC = "02:00:00:00:AA:01"


async def _reply(client: aiomqtt.Client) -> dict[str, Any]:
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        reply: dict[str, Any] = json.loads(message.payload)
        return reply
    raise AssertionError("the broker closed the stream")


@pytest.mark.slow
async def test_hundred_clients_one_identifier_three_bridges_exactly_one_ok(
    fault_postgres: Postgres, broker: Broker
) -> None:
    url, prefix = await mac_model(fault_postgres, "race", [MAC])

    endpoint = parse_mqtt_url(broker.url)
    async with (
        replica_set(
            database_url=url,
            mqtt_url=broker.url,
            prefix=prefix,
            # 99 honest losers on one identifier are not guessers: keep them under the
            # throttle so every answer is the decision itself (test_throttling covers it).
            extra_env={
                "BRIDGE_RATE_LIMIT_FAILURES": "1000",
                "BRIDGE_RATE_LIMIT_IDENTIFIER_FAILURES": "1000",
                "BRIDGE_RATE_LIMIT_MODEL_FAILURES": "1000",
            },
        ) as replicas,
        AsyncExitStack() as stack,
    ):
        # Everyone connected and subscribed first, so the requests really race.
        clients = []
        for n in range(CLIENTS):
            cid = f"racer-{n:03d}"
            c = await stack.enter_async_context(mqtt.client(endpoint, cid, persistent=False))
            await c.subscribe(protocol.reply_topic(prefix, cid), qos=1)
            clients.append((cid, c))
        requests = [
            (
                cid,
                c,
                {"request_id": f"r{n}", "vendor": "acme", "model": "race-1", "identifier": MAC},
            )
            for n, (cid, c) in enumerate(clients)
        ]
        await asyncio.gather(
            *(
                c.publish(protocol.activate_topic(prefix, cid), json.dumps(body).encode(), qos=1)
                for cid, c, body in requests
            )
        )
        async with asyncio.timeout(30):
            replies = await asyncio.gather(*(_reply(c) for _, c, _ in requests))
    served = [r.activations for r in replicas]

    codes = sorted(r["code"] if r["status"] == "error" else "ok" for r in replies)
    assert codes.count("ok") == 1, codes
    assert codes.count("already_activated") == CLIENTS - 1, codes
    assert sum(served) == CLIENTS and sum(n > 0 for n in served) >= 2, served  # really shared
    winner = next(r for r in replies if r["status"] == "ok")
    conn = await asyncpg.connect(url)
    try:
        key_hash = await conn.fetchval(
            "SELECT key_hash FROM devices WHERE identifier = $1", "02000000AA01"
        )
        fresh = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'activate' AND code = 'ok'"
        )
    finally:
        await conn.close()
    assert KeyHasher(TEST_SECRET.encode()).verify(winner["key"], key_hash)
    assert fresh == 1
