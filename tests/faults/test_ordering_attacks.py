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
from tests.faults.cluster import Broker, Postgres, mac_model, replica_set


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
    """Publish one request as ``client_id``; the first reply to it (its request id, or null)."""
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
            if reply.get("request_id") in (rid, None):  # as a device does (docs/protocol.md)
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


@pytest.mark.slow
async def test_attack_a_device_at_its_limit_and_a_sigkill_do_not_cost_the_stored_reply(
    fault_postgres: Postgres, broker: Broker
) -> None:
    """Success, failures up to the client's limit, its identifier's too, then a SIGKILL.

    The identical retry of the success is answered with the identical reply at each
    step: past the client id's own limit, past the identifier's limit (failures from
    other client ids), and published while the bridge is dead (its persistent session
    keeps the request until it is back).
    """
    mac, stranger = "02:00:00:00:BB:01", "02:00:00:00:BB:99"
    env = {"BRIDGE_RATE_LIMIT_FAILURES": "3", "BRIDGE_RATE_LIMIT_IDENTIFIER_FAILURES": "3"}
    url, prefix = await mac_model(fault_postgres, "limitkill", [mac])
    model = "limitkill-1"
    good = _request(model, mac, "r-ok")
    async with replica_set(
        database_url=url,
        mqtt_url=broker.url,
        prefix=prefix,
        count=1,
        share_group=None,
        extra_env=env,
    ) as (bridge,):
        first = await _ask(broker.url, prefix, "dev-l", good)
        assert first["status"] == "ok", first
        codes = [
            (await _ask(broker.url, prefix, "dev-l", _request(model, stranger, f"r-bad-{n}")))[
                "code"
            ]
            for n in range(4)
        ]
        assert codes == ["not_approved"] * 3 + ["rate_limited"], codes
        # Others fail on its number (new request ids: already_activated) past its limit.
        others = [
            (await _ask(broker.url, prefix, f"other-{n}", _request(model, mac, f"x-{n}")))["code"]
            for n in range(4)
        ]
        assert others == ["already_activated"] * 3 + ["rate_limited"], others
        assert await _ask(broker.url, prefix, "dev-l", good) == first
        # A new request id from the same client id is throttled, with its reason's sentence.
        fresh = await _ask(broker.url, prefix, "dev-l", _request(model, mac, "r-new"))
        assert fresh["code"] == "rate_limited" and fresh["retry_after"] >= 1, fresh
        bridge.kill()
        waiting = asyncio.create_task(_ask(broker.url, prefix, "dev-l", good))
        await asyncio.sleep(1.0)  # published while no bridge runs
        assert not waiting.done()
        bridge.start()
        await bridge.wait_subscribed()
        assert await asyncio.wait_for(waiting, 20) == first
    issued = await _issued(url)
    assert issued == {mac.replace(":", ""): 1}, issued


async def _issued(url: str) -> dict[str, int]:
    """Keys issued per identifier, from the audit log (replays are tallied, not counted)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT identifier, count(*) AS n FROM audit_log WHERE action = 'activate'"
            " AND code = 'ok' AND last_at IS NULL GROUP BY identifier"
        )
    finally:
        await conn.close()
    return {r["identifier"]: r["n"] for r in rows}


async def _burst(
    broker_url: str, prefix: str, requests: list[tuple[str, bytes]], go: asyncio.Event
) -> list[dict[str, Any]]:
    """Connect every (client id, request) first, then publish them all at once on ``go``."""
    endpoint = parse_mqtt_url(broker_url)
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for client_id, _ in requests:
            client = await stack.enter_async_context(
                mqtt.client(endpoint, client_id, persistent=False)
            )
            await client.subscribe(protocol.reply_topic(prefix, client_id), qos=1)
            clients.append(client)

        async def one(client: aiomqtt.Client, client_id: str, payload: bytes) -> dict[str, Any]:
            await go.wait()
            await client.publish(protocol.activate_topic(prefix, client_id), payload, qos=1)
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                reply: dict[str, Any] = json.loads(message.payload)
                return reply
            raise AssertionError("the broker closed the stream")

        async with asyncio.timeout(20):
            return await asyncio.gather(
                *(
                    one(client, client_id, payload)
                    for client, (client_id, payload) in zip(clients, requests, strict=True)
                )
            )


def _is_a_sentence(reply: dict[str, Any]) -> bool:
    message = reply.get("message")
    return isinstance(message, str) and len(message) > 20 and message.endswith(".")


@pytest.mark.slow
async def test_attack_lifecycle_changes_racing_a_burst_of_activations(
    fault_postgres: Postgres, broker: Broker
) -> None:
    """Revoke, release and re-enable land in the middle of bursts for one device.

    Two bridges in a share group answer 8 client ids at once while the CLI's Admin
    changes the device. After every round: at most one key per activation window, no
    key issued after a revoke or release committed, the device `activated` exactly when
    it holds a key hash, every key received recorded once in the audit log, the last key
    verifying, and every refusal a sentence with its reason.
    """
    from bridge.admin import Admin  # noqa: PLC0415
    from bridge.config import Settings  # noqa: PLC0415
    from tests.faults.cluster import TEST_SECRET, new_database  # noqa: PLC0415

    mac = "02:00:00:00:CC:01"
    canonical = mac.replace(":", "")
    url = await new_database(fault_postgres, f"lifecycle_{secrets.token_hex(4)}")
    prefix = f"lifecycle-{secrets.token_hex(4)}/provision"
    settings = Settings(database_url=url, secret=TEST_SECRET, state_dir=Path("/nonexistent"))
    env = {
        "BRIDGE_RATE_LIMIT_IDENTIFIER_FAILURES": "100000",
        "BRIDGE_RATE_LIMIT_MODEL_FAILURES": "100000",
    }
    ops = ["revoke", "reenable", "release", "claim", "reenable", "revoke", "reenable"] * 2
    refusals: dict[str, int] = {}
    oks = 0
    last_key = ""
    async with Admin.connect(settings, actor="racer") as admin:
        await admin.add_model("acme", "race-1", kind="mac", plaintext_keys=True)
        await admin.approve("acme", "race-1", [mac])
        await admin.claim("acme", "race-1", mac, owner="alice")
        async with replica_set(
            database_url=url, mqtt_url=broker.url, prefix=prefix, count=2, extra_env=env
        ):
            for n, op in enumerate(ops):
                go = asyncio.Event()
                requests = [
                    (f"race-{n}-{k}", _request("race-1", mac, f"r-{n}-{k}")) for k in range(8)
                ]
                burst = asyncio.create_task(_burst(broker.url, prefix, requests, go))
                await asyncio.sleep(1.0)  # the burst's clients connect and subscribe
                before = await _last_audit_id(url)
                go.set()
                await asyncio.sleep(0.003 * n)  # lands at a different point each round
                if op == "claim":
                    await admin.claim("acme", "race-1", mac, owner="alice")
                elif op == "release":
                    await admin.release("acme", "race-1", mac, owner="alice", reason="race")
                elif op == "revoke":
                    await admin.revoke("acme", "race-1", mac, reason="race")
                else:
                    await admin.reenable("acme", "race-1", mac, reason="race")
                replies = await burst
                keys = [r["key"] for r in replies if r["status"] == "ok"]
                oks += len(keys)
                last_key = keys[-1] if keys else last_key
                for reply in replies:
                    if reply["status"] == "error":
                        assert _is_a_sentence(reply), reply
                        refusals[reply["code"]] = refusals.get(reply["code"], 0) + 1
                issued, op_id = await _round_audit(url, before, op)
                # Every key received was issued once, and none after the change committed.
                assert len(issued) == len(keys), (op, issued, replies)
                if op in ("revoke", "release"):
                    assert all(i < op_id for i in issued), (op, issued, op_id)
                # One window before the change, at most one after it (re-enable, claim).
                assert len(keys) <= (2 if op in ("reenable", "claim") else 1), (op, replies)
                device = await admin.show("acme", "race-1", mac)
                holds_key = await _holds_key(url, canonical)
                assert (device.state == "activated") <= holds_key, (op, device)
                if device.state in ("approved", "revoked"):
                    assert not holds_key, (op, device)
                if device.state == "activated":
                    assert await admin.verify_key("acme", "race-1", mac, last_key)
    # The races happened: some rounds saw both keys and refusals.
    assert oks >= 3 and refusals, (oks, refusals)
    assert set(refusals) <= {"already_activated", "revoked", "not_claimed"}, refusals


async def _last_audit_id(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM audit_log"))
    finally:
        await conn.close()


async def _round_audit(url: str, after: int, op: str) -> tuple[list[int], int]:
    """Audit ids of the keys issued since ``after``, and of the lifecycle change."""
    conn = await asyncpg.connect(url)
    try:
        issued = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM audit_log WHERE id > $1 AND action = 'activate'"
                " AND code = 'ok' AND last_at IS NULL ORDER BY id",
                after,
            )
        ]
        op_id = await conn.fetchval(
            "SELECT max(id) FROM audit_log WHERE id > $1 AND action = $2", after, op
        )
    finally:
        await conn.close()
    assert op_id is not None, op
    return issued, int(op_id)


async def _holds_key(url: str, identifier: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT key_hash IS NOT NULL FROM devices WHERE identifier = $1", identifier
            )
        )
    finally:
        await conn.close()


@pytest.mark.slow
async def test_attack_ids_at_their_limits_and_hostile_mqtt5_properties(
    fault_postgres: Postgres, broker: Broker
) -> None:
    """A 128-character client id and a 64-character request id of every allowed kind of
    character; Correlation Data of attacker bytes; a Response Topic naming a victim's
    reply topic; one character over each limit.

    The reply goes to the sender's own reply topic only, carries its Correlation Data
    byte for byte and nothing of it in the payload; the identical retry gets the
    identical reply; over the limits: a `malformed` sentence (request id), or no reply
    and an audit row (client id).
    """
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    mac = "02:00:00:00:DD:01"
    client_id = ("aZ09._:-" * 16)[:128]
    request_id = ("-:._9Za0" * 8)[:64]
    assert len(client_id) == 128 and len(request_id) == 64
    victim = "victim-device"
    hostile = (
        b'{"v":1,"request_id":"' + request_id.encode() + b'","status":"ok"}' + bytes(range(256))
    )
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = hostile
    async with _one_bridge(fault_postgres, broker, "limits", [mac]) as (url, prefix, model):
        props.ResponseTopic = protocol.reply_topic(prefix, victim)
        endpoint = parse_mqtt_url(broker.url)
        seen_by_victim: list[bytes] = []

        async def listen() -> None:
            async with mqtt.client(endpoint, victim, persistent=False) as v:
                await v.subscribe(protocol.reply_topic(prefix, "#"), qos=1)
                listening.set()
                async for message in v.messages:
                    seen_by_victim.append(message.topic.value.encode())

        listening = asyncio.Event()
        listener = asyncio.create_task(listen())
        await asyncio.wait_for(listening.wait(), 10)
        payload = _request(model, mac, request_id)
        reply, message = await _exchange(broker.url, prefix, client_id, payload, properties=props)
        again, message_again = await _exchange(
            broker.url, prefix, client_id, payload, properties=props
        )
        assert reply["status"] == "ok" and reply["request_id"] == request_id, reply
        assert again == reply
        for m in (message, message_again):
            assert m.topic.value == protocol.reply_topic(prefix, client_id)
            assert mqtt.correlation_data(m) == hostile
            assert getattr(m.properties, "ResponseTopic", None) is None
            assert isinstance(m.payload, bytes) and hostile not in m.payload
        # One over: request id refused with a sentence; client id not answered, audited.
        over = await _ask(broker.url, prefix, "limits-dev", _request(model, mac, request_id + "x"))
        assert over["code"] == "malformed" and over["request_id"] is None, over
        assert _is_a_sentence(over), over
        with pytest.raises(TimeoutError):
            await _exchange(
                broker.url, prefix, client_id + "x", _request(model, mac, "r-1"), timeout=3.0
            )
        await asyncio.sleep(0.5)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    # The victim's subscription to every reply topic saw only the limits' own replies.
    mine = {protocol.reply_topic(prefix, c).encode() for c in (client_id, "limits-dev")}
    assert set(seen_by_victim) <= mine, seen_by_victim
    assert protocol.reply_topic(prefix, victim).encode() not in seen_by_victim
    conn = await asyncpg.connect(url)
    try:
        unanswered = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE code = 'malformed' AND detail LIKE $1",
            "%carries no valid client id%",
        )
    finally:
        await conn.close()
    assert unanswered == 1


@pytest.mark.slow
async def test_attack_retries_on_both_sides_of_the_grace_period(
    fault_postgres: Postgres, broker: Broker
) -> None:
    """Within the grace period the identical reply; after it, `already_activated` with
    its sentence, never a second key; a new request id at once, `already_activated`."""
    mac = "02:00:00:00:EE:01"
    async with _one_bridge(fault_postgres, broker, "grace", [mac], BRIDGE_GRACE_SECONDS="3") as (
        url,
        prefix,
        model,
    ):
        good = _request(model, mac, "r-grace")
        first = await _ask(broker.url, prefix, "dev-g", good)
        assert first["status"] == "ok", first
        fresh = await _ask(broker.url, prefix, "dev-g", _request(model, mac, "r-other"))
        assert fresh["code"] == "already_activated" and _is_a_sentence(fresh), fresh
        await asyncio.sleep(1.5)
        assert await _ask(broker.url, prefix, "dev-g", good) == first
        await asyncio.sleep(2.0)  # past the 3 s
        late = await _ask(broker.url, prefix, "dev-g", good)
        assert late["code"] == "already_activated" and _is_a_sentence(late), late
        assert "key" not in late
    assert await _issued(url) == {mac.replace(":", ""): 1}


@pytest.mark.slow
async def test_attack_one_identifier_from_two_client_ids_across_two_replicas(
    fault_postgres: Postgres, broker: Broker
) -> None:
    """Each of 16 numbers sent at once from two client ids (the same request id, to make
    them as alike as possible) to two bridges in a share group: per number exactly one
    `ok`, the other `already_activated` with its sentence; one key recorded per number."""
    macs = [f"02:00:00:00:F0:{n:02X}" for n in range(16)]
    url, prefix = await mac_model(fault_postgres, "twin", macs)
    env = {"BRIDGE_RATE_LIMIT_IDENTIFIER_FAILURES": "1000"}
    async with replica_set(
        database_url=url, mqtt_url=broker.url, prefix=prefix, count=2, extra_env=env
    ) as bridges:
        go = asyncio.Event()
        requests = [
            (f"twin-{side}-{n}", _request("twin-1", mac, "r-same"))
            for n, mac in enumerate(macs)
            for side in "ab"
        ]
        burst = asyncio.create_task(_burst(broker.url, prefix, requests, go))
        await asyncio.sleep(1.5)
        go.set()
        replies = await burst
    for n in range(len(macs)):
        pair = replies[2 * n : 2 * n + 2]
        codes = sorted(r.get("code", "ok") for r in pair)
        assert codes == ["already_activated", "ok"], pair
        assert all(_is_a_sentence(r) for r in pair if r["status"] == "error"), pair
    assert await _issued(url) == {mac.replace(":", ""): 1 for mac in macs}
    assert all(b.activations > 0 for b in bridges), [b.activations for b in bridges]


@pytest.mark.slow
async def test_attack_sigkill_in_the_middle_of_a_burst_loses_and_duplicates_nothing(
    fault_postgres: Postgres, broker: Broker
) -> None:
    """80 devices publish at once; the bridge is SIGKILLed while it answers them and
    started again. Every device is answered; a device answered twice (before the kill,
    and again from the redelivered request) got the identical reply; one key per device."""
    macs = [f"02:00:00:00:A1:{n:02X}" for n in range(80)]
    url, prefix = await mac_model(fault_postgres, "burstkill", macs)
    endpoint = parse_mqtt_url(broker.url)
    seen: dict[str, list[dict[str, Any]]] = {f"bk-{n}": [] for n in range(len(macs))}
    async with (
        replica_set(
            database_url=url, mqtt_url=broker.url, prefix=prefix, count=1, share_group=None
        ) as (bridge,),
        contextlib.AsyncExitStack() as stack,
    ):
        clients = []
        for client_id in seen:
            client = await stack.enter_async_context(
                mqtt.client(endpoint, client_id, persistent=False)
            )
            await client.subscribe(protocol.reply_topic(prefix, client_id), qos=1)
            clients.append(client)

        async def listen(client: aiomqtt.Client, client_id: str) -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen[client_id].append(json.loads(message.payload))

        listeners = [
            asyncio.create_task(listen(c, cid)) for c, cid in zip(clients, seen, strict=True)
        ]
        for client, (client_id, mac) in zip(clients, zip(seen, macs, strict=True), strict=True):
            await client.publish(
                protocol.activate_topic(prefix, client_id),
                _request("burstkill-1", mac, f"r-{client_id}"),
                qos=1,
            )
        async with asyncio.timeout(10):
            while not any(seen.values()):  # noqa: ASYNC110 (replies, polled)
                await asyncio.sleep(0.001)
        bridge.kill()
        answered_before = sum(1 for r in seen.values() if r)
        bridge.start()
        await bridge.wait_subscribed()
        async with asyncio.timeout(30):
            while not all(seen.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # any redelivered duplicate arrives
        for task in listeners:
            task.cancel()
    assert answered_before < len(macs), "the kill came after every answer: no race"
    for client_id, replies in seen.items():
        assert replies and all(r == replies[0] for r in replies), (client_id, replies)
        assert replies[0]["status"] == "ok", replies
    assert await _issued(url) == {mac.replace(":", ""): 1 for mac in macs}
