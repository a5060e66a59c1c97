"""Hostile input through the real broker: each gets ``malformed`` or, without a safe
topic, no reply and an audit line; the service keeps answering valid requests."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiomqtt
import asyncpg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import mqtt, protocol
from bridge.admin import Admin
from bridge.config import Settings, parse_mqtt_url
from tests.helpers import RunningBridge, activate, raw_exchange

MAC = "00:1A:2B:3C:4D:5E"


def _request(**fields: object) -> bytes:
    body: dict[str, object] = {
        "request_id": "r1",
        "vendor": "acme",
        "model": "thermo-1",
        "identifier": MAC,
    }
    body.update(fields)
    return json.dumps(body).encode()


async def _ready(admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac", claim_required=False, plaintext_keys=True)
    await admin.approve("acme", "thermo-1", [MAC])


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (_request(vendor="ac\u0000me"), "'vendor' must be"),
        (_request(identifier="00:1A:2B:3C:4D:5E\u0000"), "'identifier' must be"),
        (_request(model="thermo-1\ud800"), "'model' must be"),  # a lone surrogate
        (_request(identifier="\u001b[31m"), "'identifier' must be"),  # a terminal escape
        (
            b'{"request_id":"r1","vendor":"acme","model":"thermo-1","identifier":"x","v":1e999}',
            "version 'v' must be 1",
        ),
        (_request(v=int("9" * 3000)), "version 'v' must be 1"),
        (_request(v=True), "version 'v' must be 1"),
        (_request(vendor=["acme"]), "'vendor' must be"),
        (_request(identifier={"nested": [1, 2, {"deeper": None}]}), "'identifier' must be"),
        (_request(public_key="\ud800" * 10), "32-byte X25519"),
        (_request(**{"\u0000": 1}), "unknown field '\\x00'"),
        (b"\x00" * 100, "not valid JSON"),
        (b'[{"":' * 550 + b"1" + b"}]" * 550, "not valid JSON"),  # 1,100 levels
        (b'{"request_id":"r1","vendor":NaN}', "not valid JSON"),
    ],
    ids=[
        "nul-vendor",
        "nul-identifier",
        "surrogate",
        "escape",
        "float-overflow",
        "huge-int",
        "bool-version",
        "list-type",
        "object-type",
        "surrogate-key",
        "nul-field-name",
        "nul-bytes",
        "deep-objects",
        "nan",
    ],
)
async def test_hostile_payload_gets_malformed_and_service_goes_on(
    admin: Admin, settings: Settings, bridge: RunningBridge, payload: bytes, says: str
) -> None:
    await _ready(admin)
    reply = await raw_exchange(settings, payload)
    assert reply["code"] == "malformed", reply
    assert says in reply["message"], reply
    result = await activate(settings, MAC)
    assert result.ok, result.reply


async def _topics_seen(client: aiomqtt.Client, *, seconds: float) -> list[str]:
    """Topics of every message that arrives within ``seconds``."""
    topics: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                topics.append(message.topic.value)
    return topics


async def _audited_topic_rejections(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        # Without a client id they are tallied under '*', one entry with a count (008).
        rows = await conn.fetch(
            "SELECT detail, 1 + repeats AS n FROM audit_log "
            "WHERE action = 'activate' AND client_id = '*'"
        )
    finally:
        await conn.close()
    return [r["detail"] for r in rows for _ in range(r["n"])]


async def test_topic_client_id_outside_the_rule_gets_no_reply_but_is_audited(
    admin: Admin, settings: Settings, bridge: RunningBridge, database_url: str
) -> None:
    await _ready(admin)
    assert settings.mqtt_url is not None
    endpoint = parse_mqtt_url(settings.mqtt_url.get_secret_value())
    bad_ids = ["", "x" * 129, "has space", "ünïcode", "semi;colon", "quote'd"]
    async with mqtt.client(endpoint, "watcher", persistent=False) as watcher:
        await watcher.subscribe(f"{settings.topic_prefix}/reply/#", qos=1)
        for bad in bad_ids:
            await watcher.publish(f"{settings.topic_prefix}/activate/{bad}", _request(), qos=1)
        # A '/' in the client id makes a deeper topic: the bridge's `+` never even sees it.
        await watcher.publish(f"{settings.topic_prefix}/activate/a/b", _request(), qos=1)
        # A valid request afterwards: it is answered, and nothing else was.
        result = await activate(settings, MAC, client_id="good-device")
        assert result.ok, result.reply
        topics = await _topics_seen(watcher, seconds=1.0)
        assert set(topics) == {protocol.reply_topic(settings.topic_prefix, "good-device")}
    # Wildcards cannot be published at all: the client library refuses before the broker.
    async with mqtt.client(endpoint, "wild", persistent=False) as wild:
        for topic in (f"{settings.topic_prefix}/activate/+", f"{settings.topic_prefix}/activate/#"):
            with pytest.raises((ValueError, aiomqtt.MqttError)):
                await wild.publish(topic, _request(), qos=1)
    details = await _audited_topic_rejections(database_url)
    assert len(details) == len(bad_ids), details
    assert all("not answered" in d for d in details)


async def test_response_topic_elsewhere_is_never_followed(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _ready(admin)
    assert settings.mqtt_url is not None
    endpoint = parse_mqtt_url(settings.mqtt_url.get_secret_value())
    prefix = settings.topic_prefix
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = protocol.reply_topic(prefix, "victim")
    props.CorrelationData = b"corr-1"
    async with (
        mqtt.client(endpoint, "victim", persistent=False) as victim,
        mqtt.client(endpoint, "attacker", persistent=False) as attacker,
    ):
        await victim.subscribe(f"{prefix}/#", qos=1)
        await attacker.subscribe(protocol.reply_topic(prefix, "attacker"), qos=1)
        await attacker.publish(
            protocol.activate_topic(prefix, "attacker"), _request(), qos=1, properties=props
        )
        async with asyncio.timeout(10):
            async for message in attacker.messages:
                reply = json.loads(message.payload)
                assert reply["status"] == "ok"
                assert message.topic.value == protocol.reply_topic(prefix, "attacker")
                assert getattr(message.properties, "CorrelationData", None) == b"corr-1"
                break
        seen = await _topics_seen(victim, seconds=1.0)
        # The victim saw the request and the attacker's own reply go by; nothing for it.
        assert protocol.reply_topic(prefix, "victim") not in seen
        assert protocol.reply_topic(prefix, "attacker") in seen  # the watch did work
