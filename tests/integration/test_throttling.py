"""Throttling guessers: failures counted in PostgreSQL per client id and per identifier."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from bridge import mqtt, protocol
from bridge.admin import Admin
from bridge.config import Settings, parse_mqtt_url
from tests.helpers import activate, raw_exchange, start_bridge

LEGIT = "00:1A:2B:3C:4D:5E"


async def _claimed_model(admin: Admin) -> None:
    # Raw requests without a public key: this model's vendor chose plaintext delivery.
    await admin.add_model("acme", "thermo-1", kind="mac", plaintext_keys=True)
    await admin.approve("acme", "thermo-1", [LEGIT])
    await admin.claim("acme", "thermo-1", LEGIT, owner="alice")


def _request(n: int, identifier: str) -> bytes:
    body = {"v": 1, "request_id": f"guess-{n}", "vendor": "acme", "model": "thermo-1"}
    return json.dumps({**body, "identifier": identifier}).encode()


async def _flood(settings: Settings, client_id: str, payloads: list[bytes]) -> list[dict[str, Any]]:
    """Publish every payload at once from one client; collect one reply per payload."""
    assert settings.mqtt_url is not None
    endpoint = parse_mqtt_url(settings.mqtt_url.get_secret_value())
    replies: list[dict[str, Any]] = []
    async with asyncio.timeout(60), mqtt.client(endpoint, client_id, persistent=False) as c:
        await c.subscribe(protocol.reply_topic(settings.topic_prefix, client_id), qos=1)
        topic = protocol.activate_topic(settings.topic_prefix, client_id)
        await asyncio.gather(*(c.publish(topic, p, qos=1) for p in payloads))
        async for message in c.messages:
            assert isinstance(message.payload, bytes)
            replies.append(json.loads(message.payload))
            if len(replies) == len(payloads):
                break
    return replies


async def test_a_thousand_guesses_are_cut_off_and_a_legitimate_device_still_activates(
    admin: Admin, settings: Settings, database_url: str
) -> None:
    await _claimed_model(admin)
    settings = settings.model_copy(update={"rate_limit_failures": 10})
    running = await start_bridge(settings)
    try:
        guesses = [_request(n, f"02:00:00:00:{n // 256:02X}:{n % 256:02X}") for n in range(1000)]
        flood = asyncio.create_task(_flood(settings, "guesser", guesses))
        await asyncio.sleep(0.2)  # the flood is under way
        legit = await activate(settings, LEGIT, client_id="legit-device")
        replies = await flood
    finally:
        await running.halt()
    assert legit.ok, legit.reply
    codes = [r["code"] for r in replies]
    assert len(codes) == 1000
    assert codes.count("not_approved") == 10, codes[:20]
    assert codes.count("rate_limited") == 990
    limited = [r for r in replies if r["code"] == "rate_limited"]
    assert all(1 <= r["retry_after"] <= 60 for r in limited)
    assert "identifier" not in limited[0]  # a refusal says nothing about the number
    conn = await asyncpg.connect(database_url)
    try:
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE client_id = 'guesser' AND code = 'rate_limited'"
        )
    finally:
        await conn.close()
    assert audited == 990


async def test_the_limit_holds_across_a_bridge_restart(admin: Admin, settings: Settings) -> None:
    await _claimed_model(admin)
    settings = settings.model_copy(update={"rate_limit_failures": 3})
    running = await start_bridge(settings)
    try:
        codes = [
            (await raw_exchange(settings, _request(n, f"02:00:00:00:00:{n:02X}"), client_id="g"))[
                "code"
            ]
            for n in range(4)
        ]
    finally:
        await running.halt()
    assert codes == ["not_approved"] * 3 + ["rate_limited"]
    restarted = await start_bridge(settings)  # a new process would read the same rows
    try:
        again = await raw_exchange(settings, _request(9, "02:00:00:00:00:09"), client_id="g")
        other = await raw_exchange(settings, _request(9, "02:00:00:00:00:09"), client_id="h")
    finally:
        await restarted.halt()
    assert again["code"] == "rate_limited"
    assert other["code"] == "not_approved"  # another client id is not punished


async def test_guesses_decided_before_the_database_count_per_client(
    admin: Admin, settings: Settings
) -> None:
    await _claimed_model(admin)
    settings = settings.model_copy(update={"rate_limit_failures": 3})
    running = await start_bridge(settings)
    try:
        codes = []
        for n in range(3):
            reply = await raw_exchange(settings, _request(n, f"bad-{n}"), client_id="typo")
            codes.append(reply["code"])
        unknown = json.loads(_request(5, LEGIT))
        unknown["model"] = "nope"
        reply = await raw_exchange(settings, json.dumps(unknown).encode(), client_id="typo")
        codes.append(reply["code"])
        # Past the limit, even a correct request from this client waits.
        blocked = await activate(settings, LEGIT, client_id="typo")
        legit = await activate(settings, LEGIT, client_id="other")
    finally:
        await running.halt()
    assert codes == ["invalid_identifier"] * 3 + ["rate_limited"]
    assert blocked.reply["code"] == "rate_limited"
    assert legit.ok, legit.reply


async def test_one_identifier_guessed_from_many_clients_is_throttled_alone(
    admin: Admin, settings: Settings
) -> None:
    await _claimed_model(admin)
    settings = settings.model_copy(update={"rate_limit_failures": 3})
    running = await start_bridge(settings)
    try:
        codes = []
        for n in range(5):
            reply = await raw_exchange(
                settings, _request(n, "02:00:00:00:00:01"), client_id=f"botnet-{n}"
            )
            codes.append(reply["code"])
        legit = await activate(settings, LEGIT, client_id="botnet-9")
    finally:
        await running.halt()
    assert codes == ["not_approved"] * 3 + ["rate_limited"] * 2
    assert legit.ok, legit.reply


async def test_the_window_closes_and_its_counters_are_purged(
    admin: Admin, settings: Settings
) -> None:
    await _claimed_model(admin)
    settings = settings.model_copy(
        update={"rate_limit_failures": 2, "rate_limit_window_seconds": 1}
    )
    running = await start_bridge(settings)
    try:
        codes = []
        for n in range(3):
            reply = await raw_exchange(
                settings, _request(n, f"02:00:00:00:00:{n:02X}"), client_id="w"
            )
            codes.append((reply["code"], reply.get("retry_after")))
        await asyncio.sleep(1.2)
        after = await raw_exchange(settings, _request(7, "02:00:00:00:00:07"), client_id="w")
    finally:
        await running.halt()
    assert codes == [("not_approved", None), ("not_approved", None), ("rate_limited", 1)]
    assert after["code"] == "not_approved"  # a new window
    await asyncio.sleep(1.1)
    assert await admin.store.purge_attempts(1) >= 2  # the client's row and the identifiers'
