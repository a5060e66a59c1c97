"""Bad input, restarts and secrecy, end to end through the real broker and database."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import SecretStr

from bridge.admin import Admin
from bridge.config import Settings
from tests.helpers import RunningBridge, activate, raw_exchange, start_bridge

MAC = "00:1A:2B:3C:4D:5E"


async def _claimed(admin: Admin, mac: str = MAC) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [mac])
    await admin.claim("acme", "thermo-1", mac, owner="alice")


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"this is not json", "not valid JSON"),
        (b'["a", "list"]', "JSON object, not a JSON array"),
        (b"x" * 5_000, "limit is 4096 bytes"),
        (
            json.dumps(
                {
                    "request_id": "r",
                    "vendor": "acme",
                    "model": "thermo-1",
                    "identifier": MAC,
                    "colour": "red",
                }
            ).encode(),
            "unknown field 'colour'",
        ),
        (
            json.dumps({"request_id": "r", "vendor": "acme", "model": "thermo-1"}).encode(),
            "missing the field 'identifier'",
        ),
        (
            json.dumps(
                {"request_id": "r", "vendor": "acme", "model": "thermo-1", "identifier": 12345}
            ).encode(),
            "'identifier' must be",
        ),
        (
            json.dumps(
                {
                    "request_id": "r",
                    "vendor": "acme",
                    "model": "thermo-1",
                    "identifier": MAC,
                    "v": 2,
                }
            ).encode(),
            "version 'v' must be 1",
        ),
        (
            json.dumps(
                {
                    "request_id": "r",
                    "vendor": "acme",
                    "model": "thermo-1",
                    "identifier": MAC,
                    "public_key": "bm90IDMyIGJ5dGVz",
                }
            ).encode(),
            "32-byte X25519",
        ),
        (b"\xff\xfe\x00 bad utf-8", "not valid UTF-8"),
        (b"[" * 2000 + b"]" * 2000, "not valid JSON"),
    ],
    ids=[
        "not-json",
        "list",
        "5kB",
        "unknown-field",
        "missing",
        "wrong-type",
        "v2",
        "bad-key",
        "utf8",
        "nested",
    ],
)
async def test_garbage_gets_malformed_and_service_goes_on(
    admin: Admin, settings: Settings, bridge: RunningBridge, payload: bytes, says: str
) -> None:
    await _claimed(admin)
    reply = await raw_exchange(settings, payload)
    assert reply["status"] == "error"
    assert reply["code"] == "malformed"
    assert says in reply["message"]
    result = await activate(settings, MAC)
    assert result.ok, result.reply


async def test_a_request_too_large_to_be_a_packet_gets_no_reply_and_service_goes_on(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    """The bridge asks the broker for packets of at most 6,144 bytes (MQTT 5 Maximum
    Packet Size): a 1 MB request is dropped by the broker, never read by the bridge."""
    await _claimed(admin)
    with pytest.raises(TimeoutError):
        await raw_exchange(settings, b"x" * 1_000_000, timeout=3.0)
    result = await activate(settings, MAC)
    assert result.ok, result.reply


async def test_malformed_reply_echoes_a_valid_request_id(
    settings: Settings, bridge: RunningBridge
) -> None:
    reply = await raw_exchange(settings, json.dumps({"request_id": "keep-me", "oops": 1}).encode())
    assert reply["request_id"] == "keep-me"
    assert reply["code"] == "malformed"


async def test_request_published_while_bridge_is_stopped_is_answered_after_start(
    admin: Admin, settings: Settings
) -> None:
    await _claimed(admin)
    first = await start_bridge(settings)  # creates the persistent session and subscription
    await first.halt()
    waiting = asyncio.create_task(activate(settings, MAC, timeout=20))
    await asyncio.sleep(1.0)  # the request is now queued at the broker for the bridge
    assert not waiting.done()
    second = await start_bridge(settings)
    try:
        result = await waiting
    finally:
        await second.halt()
    assert result.ok, result.reply


async def test_key_never_appears_in_logs_or_database(
    admin: Admin,
    settings: Settings,
    bridge: RunningBridge,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _claimed(admin)
    with caplog.at_level(logging.DEBUG):
        plain = await activate(settings, MAC, request_id="plain")
        await activate(settings, MAC, request_id="plain")  # a replay, logged too
    assert plain.ok and plain.key
    assert any("activation" in r.getMessage() for r in caplog.records)  # we did capture the log
    assert plain.key not in caplog.text
    conn = await asyncpg.connect(database_url)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        assert {"devices", "replies", "audit_log"} <= set(tables)
        dump = "".join(
            [
                str(
                    await conn.fetchval(f"SELECT coalesce(string_agg(t::text, '|'), '') FROM {t} t")
                )
                for t in tables
            ]
        )
    finally:
        await conn.close()
    assert dump  # the dump holds the device, reply and audit rows
    assert plain.key not in dump
    assert plain.key.encode().hex() not in dump  # nor as the hex of a bytea column


async def test_database_down_gets_unavailable_with_retry_after(settings: Settings) -> None:
    # Same broker, but a database address where nothing listens: a real refusal.
    from tests.services import free_port  # noqa: PLC0415

    dead = settings.model_copy(
        update={"database_url": SecretStr(f"postgresql://nobody@127.0.0.1:{free_port()}/none")}
    )
    running = await start_bridge(dead)
    try:
        result = await activate(dead, MAC, request_id="while-down")
    finally:
        await running.halt()
    assert result.reply["code"] == "unavailable"
    assert result.reply["retry_after"] == dead.retry_after_seconds
    assert result.reply["request_id"] == "while-down"


async def test_mqtt5_correlation_data_echoed_expiry_set_never_retained(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    from bridge import mqtt, protocol  # noqa: PLC0415
    from bridge.config import parse_mqtt_url  # noqa: PLC0415

    await _claimed(admin)
    assert settings.mqtt_url is not None
    endpoint = parse_mqtt_url(settings.mqtt_url.get_secret_value())
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = b"\x00corr-42"
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    request = {
        "request_id": "c1",
        "vendor": "acme",
        "model": "thermo-1",
        "identifier": MAC,
        "public_key": base64.b64encode(public).decode(),
    }
    async with asyncio.timeout(10), mqtt.client(endpoint, "corr-dev", persistent=False) as c:
        await c.subscribe(protocol.reply_topic(settings.topic_prefix, "corr-dev"), qos=1)
        await c.publish(
            protocol.activate_topic(settings.topic_prefix, "corr-dev"),
            json.dumps(request).encode(),
            qos=1,
            properties=props,
        )
        message = await anext(aiter(c.messages))
    assert message.qos == 1
    assert not message.retain
    assert message.properties is not None
    assert getattr(message.properties, "CorrelationData", None) == b"\x00corr-42"
    expiry = getattr(message.properties, "MessageExpiryInterval", 0)
    assert 0 < expiry <= settings.reply_expiry_seconds
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload)["status"] == "ok"


async def test_every_attempt_is_audited_without_the_key(
    admin: Admin, settings: Settings, bridge: RunningBridge, database_url: str
) -> None:
    await _claimed(admin)
    ok = await activate(settings, MAC, client_id="aud-1", request_id="a1")
    await activate(settings, MAC, client_id="aud-1", request_id="a2")  # already_activated
    await activate(settings, "zz", client_id="aud-1", request_id="a3")  # invalid_identifier
    await activate(settings, MAC, model="ghost", client_id="aud-1", request_id="a4")
    await raw_exchange(settings, b"{}", client_id="aud-1")  # malformed
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT request_id, code, identifier, identifier_presented, detail::text AS detail "
            "FROM audit_log WHERE action = 'activate' AND client_id = 'aud-1' ORDER BY id"
        )
    finally:
        await conn.close()
    assert [(r["request_id"], r["code"]) for r in rows] == [
        ("a1", "ok"),
        ("a2", "already_activated"),
        ("a3", "invalid_identifier"),
        ("a4", "unknown_model"),
        (None, "malformed"),
    ]
    assert rows[0]["identifier"] == "001A2B3C4D5E"
    assert rows[0]["identifier_presented"] == MAC
    assert ok.key is not None
    assert all(ok.key not in str(dict(r)) for r in rows)
