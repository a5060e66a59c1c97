"""Device proof: a guessed sticker number is not enough for a model that requires proof.

Real Mosquitto, real PostgreSQL, the bridge in the test's loop; requests from the
reference client or as raw bytes, as an attacker would send them.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge import keys
from bridge.admin import Admin
from bridge.config import Settings
from bridge.errors import Conflict
from bridge.store import Store, migrations
from tests.conftest import _with_database
from tests.helpers import RunningBridge, activate, raw_exchange, start_bridge

VENDOR, MODEL = "acme", "lock-9"
MAC = "00:1A:2B:3C:4D:5E"
OTHER = "00:1A:2B:3C:4D:60"


async def _proof_model(admin: Admin, *numbers: str) -> None:
    await admin.add_model(VENDOR, MODEL, kind="mac")
    assert await admin.create_enrollment_key(VENDOR, MODEL) == 1
    if numbers:
        await admin.approve(VENDOR, MODEL, list(numbers))
        for number in numbers:
            await admin.claim(VENDOR, MODEL, number, owner="alice")


async def _secret(admin: Admin, number: str) -> bytes:
    _, secret_hex = await admin.device_secret(VENDOR, MODEL, number)
    assert len(secret_hex) == 64 and secret_hex == secret_hex.lower()
    return bytes.fromhex(secret_hex)


def _request(identifier: str, request_id: str, *, proof: str | None = None) -> bytes:
    """A sealed request as firmware (or an attacker) would publish it."""
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    body = {
        "v": 1,
        "request_id": request_id,
        "vendor": VENDOR,
        "model": MODEL,
        "identifier": identifier,
        "public_key": base64.b64encode(public).decode(),
    }
    if proof is not None:
        body["proof"] = proof
    return json.dumps(body).encode()


async def test_device_proof_with_the_right_secret_activates(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _proof_model(admin, MAC)
    # The factory line prints the secret from any spelling of the sticker number.
    secret = await _secret(admin, "00-1a-2b-3c-4d-5e")
    assert secret == await _secret(admin, "001A.2B3C.4D5E")
    result = await activate(
        settings, "001a2b3c4d5e", vendor=VENDOR, model=MODEL, device_secret=secret
    )
    assert result.ok, result.reply
    assert "sealed_key" in result.reply and "key" not in result.reply
    assert result.key is not None
    assert await admin.verify_key(VENDOR, MODEL, MAC, result.key)


async def test_attack_guessed_sticker_without_proof_is_answered_as_not_approved(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    """Whoever guesses a claimed device's number in its window does not take its key."""
    await _proof_model(admin)
    # What the bridge answers for a number that is not approved, decided in the
    # database: a request with a valid proof for a number nobody approved.
    unapproved = await raw_exchange(
        settings,
        _request(OTHER, "r-0", proof=keys.device_proof(await _secret(admin, OTHER), "g", "r-0")),
        client_id="g",
    )
    assert unapproved["code"] == "not_approved"
    # The same number, approved and claimed, guessed without its factory secret.
    await admin.approve(VENDOR, MODEL, [OTHER])
    await admin.claim(VENDOR, MODEL, OTHER, owner="alice")
    wrong = keys.device_proof(secrets.token_bytes(32), "g", "r-2")
    for request_id, proof in (("r-1", None), ("r-2", wrong)):
        reply = await raw_exchange(
            settings, _request(OTHER, request_id, proof=proof), client_id="g"
        )
        assert {k: v for k, v in reply.items() if k != "request_id"} == {
            k: v for k, v in unapproved.items() if k != "request_id"
        }, reply
        assert "key" not in reply and "sealed_key" not in reply
    assert (await admin.show(VENDOR, MODEL, OTHER)).state == "claimed"
    # The real device, with its secret, is not locked out by the guesses.
    device = await activate(
        settings, OTHER, vendor=VENDOR, model=MODEL, device_secret=await _secret(admin, OTHER)
    )
    assert device.ok, device.reply


async def test_attack_a_seen_proof_is_worthless_for_another_client_id_or_request_id(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    """A proof read off the wire (or a firmware log) proves nothing for another request."""
    await _proof_model(admin, MAC)
    secret = await _secret(admin, MAC)
    seen = keys.device_proof(secret, "device-1", "r-1")
    answers = [
        await raw_exchange(settings, _request(MAC, "r-1", proof=seen), client_id="attacker"),
        await raw_exchange(settings, _request(MAC, "r-2", proof=seen), client_id="device-1"),
    ]
    sentence = f"The MAC address {MAC} is not on the approval list of {VENDOR}/{MODEL}."
    assert [(a["code"], a["message"]) for a in answers] == [("not_approved", sentence)] * 2
    assert (await admin.show(VENDOR, MODEL, MAC)).state == "claimed"
    # The device's own request, with that very proof, still succeeds.
    ok = await raw_exchange(settings, _request(MAC, "r-1", proof=seen), client_id="device-1")
    assert ok["status"] == "ok", ok


async def test_proof_failures_count_against_the_client_and_are_audited(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _proof_model(admin, MAC)
    codes = [
        (await raw_exchange(settings, _request(MAC, f"r-{n}"), client_id="guesser"))["code"]
        for n in range(settings.rate_limit_failures + 1)
    ]
    assert codes == ["not_approved"] * settings.rate_limit_failures + ["rate_limited"]
    wrong = keys.device_proof(secrets.token_bytes(32), "other", "r-x")
    await raw_exchange(settings, _request(MAC, "r-x", proof=wrong), client_id="other")
    entries = await admin.audit(vendor=VENDOR, model=MODEL, identifier=MAC)
    # The guesser's refusals are one tallied entry; the other client's came past the
    # number's own limit, so it was answered rate_limited, its reason kept in the audit.
    assert [
        (e.client_id, e.code, e.count, e.detail) for e in entries if e.code == "not_approved"
    ] == [("guesser", "not_approved", 10, "device proof missing")]
    (other,) = [e for e in entries if e.client_id == "other"]
    assert other.code == "rate_limited"
    assert other.detail is not None and "(device proof invalid)" in other.detail
    assert all(e.identifier == "001A2B3C4D5E" for e in entries)


async def test_device_and_enrollment_secrets_never_in_logs_or_database(
    admin: Admin,
    settings: Settings,
    bridge: RunningBridge,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await _proof_model(admin, MAC)
    await admin.rotate_enrollment_key(VENDOR, MODEL)
    secret = await _secret(admin, MAC)
    assert (await activate(settings, MAC, vendor=VENDOR, model=MODEL, device_secret=secret)).ok
    await raw_exchange(settings, _request(MAC, "r-9"), client_id="no-proof")

    conn = await asyncpg.connect(database_url)
    try:
        model_id = await conn.fetchval("SELECT id FROM models WHERE model = $1", MODEL)
        stored = await conn.fetch(
            "SELECT generation, encrypted_key FROM enrollment_keys WHERE model_id = $1", model_id
        )
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        dump = "\n".join(
            [
                await conn.fetchval(
                    f"SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM \"{name}\" t"
                )
                for name in (r["table_name"] for r in tables)
            ]
        )
    finally:
        await conn.close()
    cipher = keys.EnrollmentCipher(settings.server_secret())
    enrollment_keys = [
        cipher.decrypt(r["encrypted_key"], model_id, r["generation"]) for r in stored
    ]
    assert len(enrollment_keys) == 2 and all(k is not None for k in enrollment_keys)
    shown = [secret.hex(), *(k.hex() for k in enrollment_keys if k is not None)]
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "enrollment" in dump  # the audit log names the operations...
    for value in shown:
        assert value not in dump  # ...never the keys or the secrets
        assert value.upper() not in dump
        assert value not in logged
    for key in enrollment_keys:
        assert key is not None and key not in b"".join(r["encrypted_key"] for r in stored)
    model = await admin.model(VENDOR, MODEL)
    assert "encrypted" not in repr(model) and str(stored[0]["encrypted_key"]) not in repr(model)


async def test_rotation_keeps_devices_made_before_working_until_retired(
    admin: Admin, settings: Settings
) -> None:
    device_a, device_b, device_c = MAC, OTHER, "00:1A:2B:3C:4D:61"
    await _proof_model(admin, device_a, device_b, device_c)
    made_before = {n: await _secret(admin, n) for n in (device_a, device_c)}
    assert await admin.rotate_enrollment_key(VENDOR, MODEL) == 2
    made_after = await _secret(admin, device_b)
    assert await _secret(admin, device_a) != made_before[device_a]  # printed from generation 2

    running = await start_bridge(settings)
    try:
        for number, secret in ((device_a, made_before[device_a]), (device_b, made_after)):
            result = await activate(
                settings, number, vendor=VENDOR, model=MODEL, device_secret=secret
            )
            assert result.ok, (number, result.reply)
    finally:
        await running.halt()

    with pytest.raises(Conflict, match="is the newest"):
        await admin.retire_enrollment_key(VENDOR, MODEL, 2)
    await admin.retire_enrollment_key(VENDOR, MODEL, 1)
    with pytest.raises(Conflict, match="already retired"):
        await admin.retire_enrollment_key(VENDOR, MODEL, 1)
    running = await start_bridge(settings)  # a fresh model cache: no 5 s wait
    try:
        late = await activate(
            settings, device_c, vendor=VENDOR, model=MODEL, device_secret=made_before[device_c]
        )
        assert late.reply["code"] == "not_approved", late.reply
    finally:
        await running.halt()

    assert await admin.rotate_enrollment_key(VENDOR, MODEL, retire_previous=True) == 3
    listed = await admin.enrollment_keys(VENDOR, MODEL)
    assert [(g.generation, g.retired_at is None) for g in listed] == [
        (3, True),
        (2, False),
        (1, False),
    ]
    with pytest.raises(Conflict, match="rotate it instead"):
        await admin.create_enrollment_key(VENDOR, MODEL)


async def test_models_made_before_the_upgrade_keep_plaintext_delivery(postgres_url: str) -> None:
    """Migration 009: devices in the field send no public key and must keep activating."""
    name = f"bridge_upgrade_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = _with_database(postgres_url, name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        for version, file_name, sql in migrations():
            if version < 9:  # the database as deployed before this change
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    file_name,
                )
        await conn.execute("INSERT INTO models (vendor, model, kind) VALUES ('acme', 'old', 'mac')")
    finally:
        await conn.close()
    async with Store.open(url, pool_size=1) as store:
        assert "009_device_proof.sql" in await store.migrate()
        admin = Admin(store, settings=Settings(database_url=url), actor="test")
        old = await admin.model("acme", "old")
        new = await admin.add_model("acme", "new", kind="mac")
    assert (old.plaintext_keys, old.proof_required) == (True, False)
    assert (new.plaintext_keys, new.proof_required) == (False, False)
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
