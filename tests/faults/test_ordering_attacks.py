"""Hostile orderings against `bridge serve` processes: retries, reuse, races, limits.

A black-box check of the device path's guarantees (docs/protocol.md, "Guarantees"):
exactly one key per device, an identical retry gets the identical reply, nothing lost
when a bridge is SIGKILLed, every refusal names its reason. Every test runs `bridge
serve` as a child process against a real Mosquitto and a real PostgreSQL of the fault
suite (tests/faults/cluster.py); devices speak raw MQTT, as firmware would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest

from bridge import mqtt, protocol
from bridge.config import parse_mqtt_url
from tests.faults.cluster import BridgeProcess, Broker, Postgres, mac_model, replica_set


def _request(model: str, identifier: str, request_id: str, **extra: Any) -> bytes:
    body = {"v": 1, "request_id": request_id, "vendor": "acme", "model": model}
    return json.dumps({**body, "identifier": identifier, **extra}).encode()


async def _exchange(
    broker_url: str,
    prefix: str,
    client_id: str,
    payload: bytes,
    *,
    timeout: float = 10.0,
    properties: Any = None,
) -> tuple[dict[str, Any], aiomqtt.Message]:
    """Publish one request as ``client_id``; the first reply carrying its request id."""
    rid = json.loads(payload)["request_id"]
    endpoint = parse_mqtt_url(broker_url)
    async with (
        asyncio.timeout(timeout),
        mqtt.client(endpoint, client_id, persistent=False) as client,
    ):
        await client.subscribe(protocol.reply_topic(prefix, client_id), qos=1)
        await client.publish(
            protocol.activate_topic(prefix, client_id), payload, qos=1, properties=properties
        )
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            reply: dict[str, Any] = json.loads(message.payload)
            if reply.get("request_id") == rid:
                return reply, message
    raise AssertionError("the broker closed the stream")


async def _ask(broker_url: str, prefix: str, client_id: str, payload: bytes) -> dict[str, Any]:
    reply, _ = await _exchange(broker_url, prefix, client_id, payload)
    return reply


@contextlib.asynccontextmanager
async def _one_bridge(
    pg: Postgres, broker: Broker, name: str, macs: list[str], **env: str
) -> AsyncIterator[tuple[str, str, str]]:
    """One `bridge serve` (no share group) on a new database; (database url, prefix, model)."""
    url, prefix = await mac_model(pg, name, macs)
    async with replica_set(
        database_url=url,
        mqtt_url=broker.url,
        prefix=prefix,
        count=1,
        share_group=None,
        extra_env=env or None,
    ):
        yield url, prefix, f"{name}-1"


@pytest.mark.slow
async def test_attack_a_request_id_reused_for_another_device_keeps_the_first_retry(
    fault_postgres: Postgres, broker: Broker
) -> None:
    """A gateway (one client id, many devices) that sends one request id for two devices.

    Both get their key; the identical retry of the first still gets the first's key.
    Before the fix the second success overwrote the first's stored reply (the replies
    were keyed by client id and request id alone), and the retry of the first was
    answered ``already_activated``: its key was lost.
    """
    first, second = "02:00:00:00:AA:01", "02:00:00:00:AA:02"
    async with _one_bridge(fault_postgres, broker, "ridreuse", [first, second]) as (
        _url,
        prefix,
        model,
    ):
        one = await _ask(broker.url, prefix, "gw-1", _request(model, first, "r-1"))
        two = await _ask(broker.url, prefix, "gw-1", _request(model, second, "r-1"))
        again = await _ask(broker.url, prefix, "gw-1", _request(model, first, "r-1"))
        again_two = await _ask(broker.url, prefix, "gw-1", _request(model, second, "r-1"))
    assert one["status"] == "ok" and two["status"] == "ok", (one, two)
    assert one["key"] != two["key"]
    assert again == one, again
    assert again_two == two, again_two
