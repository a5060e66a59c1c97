"""Throttling guessers: failures counted in PostgreSQL per client id, identifier and model;
repeated failures tallied in the audit log."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge import keys, mqtt, protocol
from bridge.admin import Admin
from bridge.config import Settings, parse_mqtt_url
from bridge.metrics import Metrics
from bridge.provisioner import Provisioner
from bridge.records import Activation, AuditTally, ModelRow, RateLimit
from bridge.store import Store
from bridge.tokens import create_token
from bridge.web.app import create_app
from tests.conftest import TEST_SECRET
from tests.helpers import activate, raw_exchange, start_bridge
from tests.integration.test_cli import _env, bridge_cli

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
        tallied = await conn.fetchrow(
            "SELECT count(*), sum(1 + repeats) FROM audit_log "
            "WHERE client_id = 'guesser' AND code = 'rate_limited'"
        )
    finally:
        await conn.close()
    # Every refusal is counted, in one tallied row.
    assert tallied is not None and tuple(tallied) == (1, 990)


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
    settings = settings.model_copy(
        update={"rate_limit_failures": 3, "rate_limit_identifier_failures": 3}
    )
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
    # The client's row, the identifiers' and the model's.
    assert await admin.store.purge_attempts(1) >= 3


# -- issue 13: a throttle that protects; issue 12: bounded growth ----------------------


def _sealed_request(request_id: str, identifier: str, private: X25519PrivateKey) -> bytes:
    public = base64.b64encode(private.public_key().public_bytes_raw()).decode()
    body = {"v": 1, "request_id": request_id, "vendor": "acme", "model": "thermo-1"}
    return json.dumps({**body, "identifier": identifier, "public_key": public}).encode()


async def _count(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        value: int = await conn.fetchval(sql)
    finally:
        await conn.close()
    return value


async def test_attack_failures_on_its_number_cannot_take_a_devices_retry(
    admin: Admin, settings: Settings
) -> None:
    """A device activates but misses the reply; 15 other client ids then fail on its
    number and the device itself passes its own limit: its identical retry still gets
    the stored reply (the same sealed key)."""
    await _claimed_model(admin)
    settings = settings.model_copy(update={"rate_limit_failures": 3})
    private = X25519PrivateKey.generate()
    first_request = _sealed_request("boot-1", LEGIT, private)
    running = await start_bridge(settings)
    try:
        first = await raw_exchange(settings, first_request, client_id="thermo-dev")
        others = [
            (await raw_exchange(settings, _request(n, LEGIT), client_id=f"other-{n}"))["code"]
            for n in range(15)
        ]
        own = [
            (
                await raw_exchange(
                    settings, _request(n, f"02:00:00:00:01:{n:02X}"), client_id="thermo-dev"
                )
            )["code"]
            for n in range(4)
        ]
        retry = await raw_exchange(settings, first_request, client_id="thermo-dev")
    finally:
        await running.halt()
    assert first["status"] == "ok", first
    assert others.count("rate_limited") > 0  # the number's own limit was passed
    assert own[-1] == "rate_limited"  # and the device's client id is past its limit
    assert retry["status"] == "ok", retry
    assert retry["sealed_key"] == first["sealed_key"]
    key = keys.unseal(private, retry["sealed_key"], "boot-1")
    stored = await admin.store.stored_key(await _model(admin), "001A2B3C4D5E")
    assert stored is not None
    hasher = keys.KeyHasher(TEST_SECRET.encode())
    assert hasher.verify(key, stored.key_hash, stored.key_id)


async def _model(admin: Admin) -> ModelRow:
    row = await admin.store.get_model("acme", "thermo-1")
    assert row is not None
    return row


async def test_attack_guesses_spread_over_many_client_ids_are_rate_limited(
    admin: Admin, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """2,000 guesses from 200 client ids (10 each, none past its own limit): past the
    model's limit the answers say nothing, the operator is told, and the real device
    still activates."""
    await _claimed_model(admin)
    metrics = Metrics()
    running = await start_bridge(settings, metrics)  # default limits: 10, 10, 100
    try:
        semaphore = asyncio.Semaphore(8)

        async def guesser(g: int) -> list[dict[str, Any]]:
            payloads = [
                _request(n, f"02:00:00:{g // 256:02X}:{g % 256:02X}:{n:02X}") for n in range(10)
            ]
            async with semaphore:
                return await _flood(settings, f"guesser-{g}", payloads)

        with caplog.at_level(logging.WARNING, logger="bridge.provisioner"):
            replies = [r for rs in await asyncio.gather(*map(guesser, range(200))) for r in rs]
        legit = await activate(settings, LEGIT, client_id="legit-device", seal=True)
    finally:
        await running.halt()
    codes = [r["code"] for r in replies]
    assert len(codes) == 2000
    assert set(codes) == {"not_approved", "rate_limited"}
    # The model's limit (100) is exact when requests come one by one; concurrent
    # failures counted on the same row at the same moment may pass it by a few.
    assert 100 <= codes.count("not_approved") <= 150, codes.count("not_approved")
    assert codes.count("rate_limited") >= 1850
    limited = [r for r in replies if r["code"] == "rate_limited"]
    assert {r["message"] for r in limited} == {
        f"Too many failed activation attempts; retry after {r['retry_after']} seconds."
        for r in limited
    }
    assert legit.ok, legit.reply
    suspected = metrics.guessing_suspected.labels("acme", "thermo-1")._value.get()
    assert suspected == codes.count("rate_limited")
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "guessing_suspected"]
    assert len(warnings) == 1  # once per model and window, not once per guess
    assert "acme/thermo-1" in warnings[0].getMessage()


async def test_attack_failures_on_a_number_before_its_claim_do_not_lock_the_device_out(
    admin: Admin, settings: Settings
) -> None:
    """20 failures by other client ids on an approved number, then the owner claims
    it: the real device's first activation succeeds."""
    await admin.add_model("acme", "thermo-1", kind="mac", plaintext_keys=True)
    await admin.approve("acme", "thermo-1", [LEGIT])
    running = await start_bridge(settings)
    try:
        codes = [
            (await raw_exchange(settings, _request(n, LEGIT), client_id=f"squatter-{n}"))["code"]
            for n in range(20)
        ]
        await admin.claim("acme", "thermo-1", LEGIT, owner="alice")
        legit = await activate(settings, LEGIT, client_id="the-real-device", seal=True)
    finally:
        await running.halt()
    # Past the identifier's limit the reason is withheld, but nobody is locked out.
    assert codes == ["not_claimed"] * 10 + ["rate_limited"] * 10
    assert legit.ok, legit.reply


async def test_a_successful_activation_writes_no_counter_row(
    admin: Admin, settings: Settings, database_url: str
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    macs = [f"02:00:00:00:02:{n:02X}" for n in range(5)]
    await admin.approve("acme", "thermo-1", macs)
    for mac in macs:
        await admin.claim("acme", "thermo-1", mac, owner="alice")
    running = await start_bridge(settings)
    try:
        results = [await activate(settings, mac, seal=True) for mac in macs]
        after_successes = await _count(database_url, "SELECT count(*) FROM attempt_counters")
        failed = await activate(settings, macs[0], client_id="late", seal=True)
        after_failure = await _count(database_url, "SELECT count(*) FROM attempt_counters")
    finally:
        await running.halt()
    assert all(r.ok for r in results)
    assert after_successes == 0
    assert failed.reply["code"] == "already_activated"
    # The client id, the identifier, the model, and the budget of audit tallies.
    assert after_failure == 4


async def _store_activate(
    store: Store, model_id: int, identifier: str, client_id: str, *, logins: bool
) -> str:
    limit = RateLimit()
    outcome = await store.activate(
        Activation(
            client_id=client_id,
            client_limit=limit.failures,
            device_logins=logins,
            grace_seconds=600,
            identifier=identifier,
            identifier_limit=limit.identifier_failures,
            key_hash=os.urandom(32),
            key_id="test",
            model_id=model_id,
            model_limit=limit.model_failures,
            presented=identifier,
            reply=os.urandom(64),
            request_id="r",
            window_seconds=limit.window_seconds,
        )
    )
    return outcome.code


async def test_attack_a_client_id_that_is_another_devices_login_is_refused(
    admin: Admin, database_url: str
) -> None:
    """Device B activating with device A's client id (A's broker login) would replace
    A's login password: refused in the activation's own round trip, nothing changes,
    B can still activate with a client id of its own. (End to end, with a broker that
    gives logins: tests/integration/test_login_reservation.py.)"""
    model = await admin.add_model("acme", "thermo-1", kind="serial")
    await admin.approve("acme", "thermo-1", ["A1", "B1"])
    for serial in ("A1", "B1"):
        await admin.claim("acme", "thermo-1", serial, owner="alice")
    async with Store.open(database_url) as store:
        first = await _store_activate(store, model.id, "A1", "dev-a", logins=True)
        before = await _count(database_url, "SELECT count(*) FROM attempt_counters")
        taken = await _store_activate(store, model.id, "B1", "dev-a", logins=True)
        scopes = await _count(
            database_url,
            "SELECT count(*) FROM attempt_counters WHERE scope IN ('identifier', 'model')",
        )
        state_b = (await admin.show("acme", "thermo-1", "B1")).state
        own = await _store_activate(store, model.id, "B1", "dev-b", logins=True)
    assert (first, before) == ("ok", 0)
    assert taken == "client_id_reserved"
    assert state_b == "claimed"  # nothing changed
    assert scopes == 0  # a refusal about the client id says nothing about the number
    assert own == "ok"
    holders = "SELECT count(*) FROM devices WHERE client_id = 'dev-a' AND key_hash IS NOT NULL"
    assert await _count(database_url, holders) == 1


async def test_without_device_logins_one_client_id_activates_many_devices(
    admin: Admin, database_url: str
) -> None:
    """A gateway or factory station may activate many devices over one client id when
    the bridge gives devices no broker logins: there is no login to take."""
    model = await admin.add_model("acme", "thermo-1", kind="serial")
    await admin.approve("acme", "thermo-1", ["G1", "G2"])
    for serial in ("G1", "G2"):
        await admin.claim("acme", "thermo-1", serial, owner="alice")
    async with Store.open(database_url) as store:
        codes = [
            await _store_activate(store, model.id, s, "station-1", logins=False)
            for s in ("G1", "G2")
        ]
    assert codes == ["ok", "ok"]


async def test_attack_a_flood_of_malformed_requests_is_tallied_not_appended(
    admin: Admin, settings: Settings, database_url: str
) -> None:
    """Repeated anonymous failures add one audit row per client id and code, with a
    count that `bridge audit` shows; no counter row."""
    running = await start_bridge(settings)
    try:
        before = await _count(database_url, "SELECT count(*) FROM audit_log")
        for c in range(3):
            replies = await _flood(settings, f"junk-{c}", [b"not json %d" % n for n in range(40)])
            assert {r["code"] for r in replies} == {"malformed"}
        after = await _count(database_url, "SELECT count(*) FROM audit_log")
    finally:
        await running.halt()
    assert after - before == 3
    entries = await admin.audit(code="malformed")
    assert sorted((e.client_id, e.count) for e in entries) == [
        ("junk-0", 40),
        ("junk-1", 40),
        ("junk-2", 40),
    ]
    assert all(e.last_at is not None and e.last_at >= e.at for e in entries)
    # The command line and the HTTP API show the same tallies.
    cli = await bridge_cli(_env(settings), "audit", "--code", "malformed")
    assert cli.returncode == 0, cli.stderr
    assert sorted(line.split("client=")[1].split()[0] for line in cli.stdout.splitlines()) == [
        "junk-0",
        "junk-1",
        "junk-2",
    ]
    assert cli.stdout.count("count=40") == 3
    token = await create_token(admin.store, "admin", None, actor="test")
    transport = httpx.ASGITransport(app=create_app(admin.store, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as api:
        response = await api.get(
            "/v1/audit",
            params={"code": "malformed"},
            headers={"Authorization": f"Bearer {token.token}"},
        )
    assert response.status_code == 200, response.text
    assert sorted(e["count"] for e in response.json()["entries"]) == [40, 40, 40]
    # Malformed input is not counted by the throttle; one row counts the tallies opened.
    counters = "SELECT count(*) FROM attempt_counters WHERE scope <> 'tally'"
    assert await _count(database_url, counters) == 0


async def test_attack_many_client_ids_share_one_tally_past_the_budget(
    admin: Admin, database_url: str
) -> None:
    """Fresh client ids cannot buy one audit row each: past the budget of client ids
    per code and window, their failures are counted in one row (client id '*')."""
    await admin.add_model("acme", "thermo-1", kind="mac", plaintext_keys=True)
    async with Store.open(database_url, tally=AuditTally(clients=5)) as store:
        provisioner = Provisioner(
            store,
            keys.KeyHasher(TEST_SECRET.encode()),
            keys.ReplayCipher(TEST_SECRET.encode()),
            limit=RateLimit(failures=100, model_failures=10_000, identifier_failures=10_000),
        )
        before = await _count(database_url, "SELECT count(*) FROM audit_log")
        for n in range(300):
            reply = await provisioner.activate(f"fresh-{n}", b"{")
            assert reply.code == "malformed"
            reply = await provisioner.activate(
                f"fresh-{n}", _request(n, f"02:00:00:04:00:{n % 256:02X}")
            )
            assert reply.code == "not_approved"
        after = await _count(database_url, "SELECT count(*) FROM audit_log")
    entries = await admin.audit(limit=1000)
    tallies = {(e.client_id, e.code): e.count for e in entries if e.code != "ok"}
    assert after - before == 2 * (5 + 1)
    assert tallies[("*", "malformed")] == 295
    assert tallies[("*", "not_approved")] == 295
    assert tallies[("fresh-0", "malformed")] == 1
