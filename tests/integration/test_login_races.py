"""A revoke racing an activation's broker login, against `bridge serve` as a process.

An activation commits its key, then creates the device's broker login; a revoke commits,
then disables that login. Both happen after their commits, on two connections to the
broker's dynamic-security plugin, so they can cross. Real processes: `bridge serve`
(a child process), Mosquitto with the shipped configuration and the plugin, PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bridge import mqtt, protocol
from bridge.admin import Admin
from bridge.config import Settings
from tests.conftest import TEST_SECRET
from tests.faults.serving import Serve
from tests.integration import test_broker_security as secure
from tests.integration.test_login_namespace import _opens

secure_broker = secure.secure_broker
secure_settings = secure.secure_settings
SecureBroker = secure.SecureBroker

DEVICES = 150  # enough that the bridge's login changes queue behind one another


def _serve(settings: Settings, broker: SecureBroker, log: Path, **env: str) -> Serve:
    assert settings.database_url is not None and settings.mqtt_url is not None
    return Serve(
        log,
        {
            "BRIDGE_DATABASE_URL": settings.database_url.get_secret_value(),
            "BRIDGE_MQTT_URL": settings.mqtt_url.get_secret_value(),
            "BRIDGE_MQTT_CA_FILE": str(broker.ca_file),
            "BRIDGE_TOPIC_PREFIX": settings.topic_prefix,
            "BRIDGE_SECRET": TEST_SECRET,
            "BRIDGE_DYNSEC": "true",
            "BRIDGE_DYNSEC_USERNAME": "bridge-admin",
            "BRIDGE_DYNSEC_PASSWORD": broker.admin_password,
            "BRIDGE_CLIENT_ID": settings.mqtt_client_id,
            **env,
        },
    )


async def _device(
    broker: SecureBroker, client_id: str, mac: str, go: asyncio.Event
) -> dict[str, Any]:
    payload = json.dumps(
        {"v": 1, "request_id": "r-1", "vendor": "acme", "model": "race-1", "identifier": mac}
    ).encode()
    async with mqtt.client(broker.endpoint(), client_id, persistent=False) as client:
        await client.subscribe(protocol.reply_topic(broker.prefix, client_id), qos=1)
        await go.wait()
        await client.publish(protocol.activate_topic(broker.prefix, client_id), payload, qos=1)
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            reply: dict[str, Any] = json.loads(message.payload)
            return reply
    raise AssertionError("the broker closed the stream")


async def _burst(broker: SecureBroker, devices: list[tuple[str, str]]) -> list[asyncio.Task[Any]]:
    """(client id, MAC) devices, subscribed first, then all sending at once."""
    go = asyncio.Event()
    tasks = [asyncio.create_task(_device(broker, cid, mac, go)) for cid, mac in devices]
    await asyncio.sleep(1.0)  # every device subscribed
    go.set()
    return tasks


async def _kill_when(serve: Serve, settings: Settings, committed: str, count: int) -> None:
    """SIGKILL ``serve`` once the query ``committed`` counts ``count`` rows, then start it
    again: keys are committed and their logins still queued."""
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        async with asyncio.timeout(30):
            while await conn.fetchval(committed) < count:  # noqa: ASYNC110 (another process)
                await asyncio.sleep(0.002)
    finally:
        await conn.close()
    serve.kill()
    serve.start()


async def _race_model(admin: Admin, macs: list[str]) -> None:
    await admin.add_model("acme", "race-1", kind="mac", claim_required=False, plaintext_keys=True)
    await admin.approve("acme", "race-1", macs)


@pytest.mark.slow
async def test_attack_a_revoke_racing_the_activations_login_leaves_it_closed(
    admin: Admin, secure_broker: SecureBroker, secure_settings: Settings, tmp_path: Path
) -> None:
    """Each device is revoked the moment its key is committed, while `serve` is still
    creating its broker login. Was: the revoke found no login to disable, the activation
    then created it, and the revoked key opened the broker."""
    macs = [f"02:00:00:00:9A:{n:02X}" for n in range(DEVICES)]
    await _race_model(admin, macs)
    serve = _serve(secure_settings, secure_broker, tmp_path / "serve.log")
    serve.start()
    revoked: set[str] = set()
    try:
        await serve.wait_event("subscribed")
        assert secure_settings.database_url is not None
        conn = await asyncpg.connect(secure_settings.database_url.get_secret_value())
        go = asyncio.Event()
        devices = [
            asyncio.create_task(_device(secure_broker, f"race-{n}", mac, go))
            for n, mac in enumerate(macs)
        ]
        async with Admin.connect(secure_settings, actor="racer") as racer:
            await asyncio.sleep(1.0)  # every device subscribed
            go.set()
            async with asyncio.timeout(30):
                while len(revoked) < DEVICES:
                    rows = await conn.fetch(
                        "SELECT identifier FROM devices WHERE key_hash IS NOT NULL"
                    )
                    for row in rows:
                        if row["identifier"] not in revoked:
                            revoked.add(row["identifier"])
                            await racer.revoke("acme", "race-1", row["identifier"], reason="race")
                    await asyncio.sleep(0.002)
        replies = await asyncio.gather(*devices)
        await conn.close()
        await asyncio.sleep(1.0)  # the bridge's last login changes are done
        opened = [
            f"race-{n}"
            for n, reply in enumerate(replies)
            if reply["status"] == "ok"
            and await _opens(secure_broker, f"race-{n}", reply["key"], f"race-{n}")
        ]
    finally:
        with contextlib.suppress(Exception):
            await serve.terminate()
    assert all(r["status"] == "ok" for r in replies), replies
    assert opened == [], f"{len(opened)} revoked keys open the broker: {opened}"


@pytest.mark.slow
async def test_attack_sigkill_between_the_commit_and_the_login(
    admin: Admin, secure_broker: SecureBroker, secure_settings: Settings, tmp_path: Path
) -> None:
    """`serve` is SIGKILLed while keys are committed and their logins still queued, then
    started again: every device gets its key (the stored reply, from the redelivered
    request), and every key opens the broker."""
    macs = [f"02:00:00:00:9B:{n:02X}" for n in range(DEVICES)]
    await _race_model(admin, macs)
    serve = _serve(secure_settings, secure_broker, tmp_path / "serve.log")
    serve.start()
    try:
        await serve.wait_event("subscribed")
        devices = await _burst(secure_broker, [(f"kill-{n}", mac) for n, mac in enumerate(macs)])
        committed = "SELECT count(*) FROM devices WHERE key_hash IS NOT NULL"
        await _kill_when(serve, secure_settings, committed, 30)
        replies = await asyncio.wait_for(asyncio.gather(*devices), 60)
        await asyncio.sleep(1.0)
        closed = [
            f"kill-{n}"
            for n, reply in enumerate(replies)
            if reply["status"] == "ok"
            and not await _opens(secure_broker, f"kill-{n}", reply["key"], f"kill-{n}")
        ]
    finally:
        with contextlib.suppress(Exception):
            await serve.terminate()
    assert all(r["status"] == "ok" for r in replies), replies
    assert closed == [], f"{len(closed)} issued keys do not open the broker: {closed}"


@pytest.mark.slow
async def test_attack_sigkill_during_a_reactivation_from_another_client_id(
    admin: Admin, secure_broker: SecureBroker, secure_settings: Settings, tmp_path: Path
) -> None:
    """Devices activated from one client id, re-enabled, activate again from another;
    `serve` is SIGKILLed in the middle. Afterwards every new key opens the broker under
    its new client id, and no old key opens it under the old one."""
    macs = [f"02:00:00:00:9C:{n:02X}" for n in range(DEVICES)]
    await _race_model(admin, macs)
    serve = _serve(secure_settings, secure_broker, tmp_path / "serve.log")
    serve.start()
    try:
        await serve.wait_event("subscribed")
        firsts = await _burst(secure_broker, [(f"old-{n}", mac) for n, mac in enumerate(macs)])
        old = await asyncio.wait_for(asyncio.gather(*firsts), 60)
        assert all(r["status"] == "ok" for r in old), old
        for mac in macs:
            await admin.reenable("acme", "race-1", mac, reason="moved")
        seconds = await _burst(secure_broker, [(f"new-{n}", mac) for n, mac in enumerate(macs)])
        moved = "SELECT count(*) FROM devices WHERE client_id LIKE 'new-%'"
        await _kill_when(serve, secure_settings, moved, 30)
        new = await asyncio.wait_for(asyncio.gather(*seconds), 60)
        await asyncio.sleep(1.0)
        assert all(r["status"] == "ok" for r in new), new
        old_open = [
            n
            for n in range(DEVICES)
            if await _opens(secure_broker, f"old-{n}", old[n]["key"], f"old-{n}")
        ]
        new_closed = [
            n
            for n in range(DEVICES)
            if not await _opens(secure_broker, f"new-{n}", new[n]["key"], f"new-{n}")
        ]
    finally:
        with contextlib.suppress(Exception):
            await serve.terminate()
    assert new_closed == [], f"{len(new_closed)} new keys do not open the broker"
    assert old_open == [], f"{len(old_open)} replaced keys still open the broker: {old_open}"


@pytest.mark.slow
async def test_attack_one_client_id_for_two_devices_at_once_on_two_bridges(
    admin: Admin, secure_broker: SecureBroker, secure_settings: Settings, tmp_path: Path
) -> None:
    """With device logins a client id is one device's login. 20 client ids each send
    two numbers at once, to two bridges of a share group: per client id exactly one
    `ok`, the other `client_id_reserved` with its sentence, and the key opens the broker."""
    pairs = 20
    macs = [f"02:00:00:00:9D:{n:02X}" for n in range(2 * pairs)]
    await admin.add_model("acme", "race-1", kind="mac", claim_required=False, plaintext_keys=True)
    await admin.approve("acme", "race-1", macs)
    bridges = [
        _serve(
            secure_settings.model_copy(
                update={"client_id": f"{secure_settings.mqtt_client_id}-{n}"}
            ),
            secure_broker,
            tmp_path / f"serve-{n}.log",
            BRIDGE_SHARE_GROUP="twins",
        )
        for n in range(2)
    ]
    for bridge in bridges:
        bridge.start()
    try:
        for bridge in bridges:
            await bridge.wait_event("subscribed")
        go = asyncio.Event()
        tasks = [
            asyncio.create_task(_pair(secure_broker, f"pair-{n}", macs[2 * n : 2 * n + 2], go))
            for n in range(pairs)
        ]
        await asyncio.sleep(1.0)
        go.set()
        replies = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        opened = 0
        for n, pair in enumerate(replies):
            codes = sorted(r.get("code", "ok") for r in pair)
            assert codes == ["client_id_reserved", "ok"], pair
            (reply,) = [r for r in pair if r["status"] == "ok"]
            (refused,) = [r for r in pair if r["status"] == "error"]
            assert refused["message"].endswith("client id of its own."), refused
            opened += await _opens(secure_broker, f"pair-{n}", reply["key"], f"pair-{n}")
    finally:
        for bridge in bridges:
            with contextlib.suppress(Exception):
                await bridge.terminate()
    assert opened == pairs
    served = [len(b.events("activation")) for b in bridges]
    assert all(served), served


async def _pair(
    broker: SecureBroker, client_id: str, macs: list[str], go: asyncio.Event
) -> list[dict[str, Any]]:
    """Two requests (two numbers) published back to back by one client id; both replies."""
    async with mqtt.client(broker.endpoint(), client_id, persistent=False) as client:
        await client.subscribe(protocol.reply_topic(broker.prefix, client_id), qos=1)
        await go.wait()
        for n, mac in enumerate(macs):
            body = {"v": 1, "request_id": f"r-{n}", "vendor": "acme", "model": "race-1"}
            payload = json.dumps({**body, "identifier": mac}).encode()
            await client.publish(protocol.activate_topic(broker.prefix, client_id), payload, qos=1)
        replies: list[dict[str, Any]] = []
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            replies.append(json.loads(message.payload))
            if len(replies) == len(macs):
                return replies
    raise AssertionError("the broker closed the stream")


@pytest.mark.slow
async def test_attack_client_ids_at_the_limit_get_a_login_of_their_own(
    admin: Admin, secure_broker: SecureBroker, secure_settings: Settings, tmp_path: Path
) -> None:
    """128-character client ids of every allowed character, and one-character ones made
    of punctuation, become broker logins that open with their key and only theirs."""
    client_ids = [("aZ09._:-" * 16)[:128], ("-:._" * 32)[:128], ".", ":", "-", "_"]
    macs = [f"02:00:00:00:9E:{n:02X}" for n in range(len(client_ids))]
    await admin.add_model("acme", "race-1", kind="mac", claim_required=False, plaintext_keys=True)
    await admin.approve("acme", "race-1", macs)
    serve = _serve(secure_settings, secure_broker, tmp_path / "serve.log")
    serve.start()
    try:
        await serve.wait_event("subscribed")
        go = asyncio.Event()
        go.set()
        replies = [
            await _device(secure_broker, client_id, mac, go)
            for client_id, mac in zip(client_ids, macs, strict=True)
        ]
        assert all(r["status"] == "ok" for r in replies), replies
        for n, (client_id, reply) in enumerate(zip(client_ids, replies, strict=True)):
            assert await _opens(secure_broker, client_id, reply["key"], client_id), client_id
            other = client_ids[(n + 1) % len(client_ids)]
            assert not await _opens(secure_broker, client_id, replies[n - 1]["key"], client_id)
            assert not await _opens(secure_broker, other, reply["key"], other)
    finally:
        with contextlib.suppress(Exception):
            await serve.terminate()
