"""One fault at a time, one bridge process: what the chaos scenario does at scale, spelled out.

- PostgreSQL stops: the request gets ``unavailable`` with ``retry_after``; once the
  database is back on the same socket, the same bridge process (never restarted)
  answers the device's retry with a key.
- The broker restarts while the bridge cannot reconnect yet: a request published in
  that gap waits in the bridge's persistent session (restored from the broker's
  persistence file) and is answered once the bridge is back, with no retry at all.
  With a share group, Mosquitto 2.0.11 does not restore the ``$share`` subscription
  (see test_shared_subscription.py), so there the request of the gap is lost and the
  device's retry with the same request id is what gets it answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bridge import mqtt, protocol
from bridge.client import activate_device
from bridge.config import parse_mqtt_url
from tests.faults.cluster import BridgeProcess, Broker, Postgres, mac_model


async def _setup(pg: Postgres, macs: list[str]) -> tuple[str, str]:
    return await mac_model(pg, "restart", macs)


@pytest.mark.slow
async def test_database_stop_gives_unavailable_then_the_same_process_recovers(
    fault_postgres: Postgres, broker: Broker, tmp_path: Path
) -> None:
    url, prefix = await _setup(fault_postgres, ["02:00:00:00:DB:01", "02:00:00:00:DB:02"])
    bridge = BridgeProcess(
        client_id="bridge-db",
        database_url=url,
        mqtt_url=broker.url,
        prefix=prefix,
        share_group=None,
        workdir=tmp_path,
    )
    endpoint = parse_mqtt_url(broker.url)

    async def attempt(identifier: str, request_id: str) -> dict[str, Any]:
        result = await activate_device(
            endpoint,
            prefix=prefix,
            vendor="acme",
            model="restart-1",
            identifier=identifier,
            client_id="device-db",
            request_id=request_id,
        )
        return result.reply

    bridge.start()
    try:
        await bridge.wait_subscribed()
        assert (await attempt("02:00:00:00:DB:01", "warm"))["status"] == "ok"  # pool is warm
        pid = bridge.pid
        await asyncio.to_thread(fault_postgres.stop, "fast")
        try:
            down = await attempt("02:00:00:00:DB:02", "during")
        finally:
            await asyncio.to_thread(fault_postgres.start)
        back = await attempt("02:00:00:00:DB:02", "during")  # the device's retry
        assert bridge.alive() and bridge.pid == pid  # recovered without a restart
    finally:
        code = await asyncio.to_thread(bridge.terminate)
    assert down["code"] == "unavailable" and down["retry_after"] == 1, down
    assert back["status"] == "ok" and back["request_id"] == "during", back
    assert code == 0


@pytest.mark.slow
@pytest.mark.parametrize("share_group", [None, "provisioners"])
async def test_request_published_while_bridge_reconnects_after_broker_restart_is_answered(
    fault_postgres: Postgres, broker: Broker, tmp_path: Path, share_group: str | None
) -> None:
    url, prefix = await _setup(fault_postgres, ["02:00:00:00:B0:01"])
    bridge = BridgeProcess(
        client_id="bridge-broker",
        database_url=url,
        mqtt_url=broker.url,
        prefix=prefix,
        share_group=share_group,
        workdir=tmp_path,
    )
    endpoint = parse_mqtt_url(broker.url)
    body = {
        "request_id": "gap",
        "vendor": "acme",
        "model": "restart-1",
        "identifier": "02:00:00:00:B0:01",
    }
    bridge.start()
    try:
        await bridge.wait_subscribed()
        assert bridge.proc is not None
        # Frozen, the bridge cannot reconnect: the broker restarts and the request below
        # can only wait in the bridge's session, restored from the persistence file.
        bridge.proc.send_signal(signal.SIGSTOP)
        try:
            await broker.restart(down_seconds=0.5)
            async with mqtt.client(endpoint, "device-gap", persistent=False) as device:
                await device.subscribe(protocol.reply_topic(prefix, "device-gap"), qos=1)
                topic = protocol.activate_topic(prefix, "device-gap")
                await device.publish(topic, json.dumps(body).encode(), qos=1)
                bridge.proc.send_signal(signal.SIGCONT)
                reply = await _first_reply(device, 10.0)
                retried = reply is None
                if retried:  # firmware's retry: the same request id
                    await device.publish(topic, json.dumps(body).encode(), qos=1)
                    reply = await _first_reply(device, 10.0)
        finally:
            bridge.proc.send_signal(signal.SIGCONT)
        assert bridge.alive()
    finally:
        code = await asyncio.to_thread(bridge.terminate)
    assert reply is not None and reply["status"] == "ok" and reply["request_id"] == "gap", reply
    assert bridge.events("reconnect")  # it did lose the broker and came back
    assert code == 0
    if share_group is None:
        assert not retried  # the persistent session kept the request: no retry needed


async def _first_reply(client: aiomqtt.Client, seconds: float) -> dict[str, Any] | None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                reply: dict[str, Any] = json.loads(message.payload)
                return reply
    return None
