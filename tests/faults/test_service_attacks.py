"""Issue 12 against `bridge serve` processes: crash, hang, stolen session, orphaned broker.

Each attack runs against real processes: `bridge serve` as a child process, on its
embedded defaults (mosquitto started by serve with the shipped configuration and the
dynamic-security plugin, as `bridge serve --dev` does) or on a plain Mosquitto, and
the test's own PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import socket
from pathlib import Path

import aiomqtt
import pytest
from pydantic import SecretStr

from bridge import mqtt, protocol
from bridge.admin import Admin
from bridge.config import Settings, parse_mqtt_url
from bridge.service import MAX_TAKEOVERS, YOUNG_SECONDS
from tests.faults.netfault import resetting_proxy
from tests.faults.serving import Serve, embedded_broker_pid, process_gone, readiness
from tests.helpers import activate, raw_exchange
from tests.services import free_port

GOOD = "02:00:00:00:00:01"


async def _model(admin: Admin, macs: list[str], model: str = "atk-1") -> None:
    await admin.add_model("acme", model, kind="mac", claim_required=False)
    await admin.approve("acme", model, macs)


def _embedded_serve(
    tmp_path: Path, database_url: str, prefix: str, **env: str
) -> tuple[Serve, Settings]:
    """serve --dev on its embedded mosquitto (free port), and the settings a device uses."""
    url = f"mqtt://127.0.0.1:{free_port()}"
    serve = Serve(
        tmp_path / "serve.log",
        {
            "BRIDGE_DATABASE_URL": database_url,
            "BRIDGE_STATE_DIR": str(tmp_path / "state"),
            "BRIDGE_TOPIC_PREFIX": prefix,
            **env,
        },
        embedded_url=url,
        args=("--dev",),
    )
    device = Settings(
        mqtt_url=SecretStr(url),
        topic_prefix=prefix,
        secret="unused-by-devices-" + "z" * 20,
        state_dir=tmp_path / "device-state",
    )
    return serve, device


def _request(identifier: str, request_id: str, **extra: str) -> bytes:
    body = {"request_id": request_id, "vendor": "acme", "model": "atk-1", "identifier": identifier}
    return json.dumps({**body, **extra}).encode()


@pytest.mark.slow
async def test_attack_zero_public_key_does_not_stop_serve(
    admin: Admin, database_url: str, prefix: str, tmp_path: Path
) -> None:
    """The original crash: 32 zero bytes as public_key made serve exit 1, at every restart."""
    await _model(admin, [GOOD])
    serve, device = _embedded_serve(tmp_path, database_url, prefix)
    zero_key = base64.b64encode(bytes(32)).decode()
    serve.start()
    try:
        await serve.wait_event("subscribed")
        reply = await raw_exchange(
            device, _request(GOOD, "zero", public_key=zero_key), client_id="zero-key"
        )
        assert reply["code"] == "malformed" and "low-order" in reply["message"], reply
        assert serve.alive()
        good = await activate(device, GOOD, model="atk-1", seal=True)
        assert good.ok, good.reply
        code, _ = await serve.terminate()
        assert code == 0, serve.text()[-3000:]
        serve.start()  # its session holds nothing that stops it again
        await serve.wait_event("subscribed")
        await asyncio.sleep(1.0)
        assert serve.alive()
    finally:
        code, _ = await serve.terminate()
    assert code == 0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_embedded_mosquitto_goes_with_serve(
    database_url: str, prefix: str, tmp_path: Path, how: str
) -> None:
    serve, device = _embedded_serve(tmp_path, database_url, prefix)
    serve.start()
    try:
        await serve.wait_event("subscribed")
        broker = embedded_broker_pid(serve)
        assert not process_gone(broker)
        if how == "SIGKILL":
            serve.kill()  # no finally runs: only the kernel can tell the broker
        else:
            code, _ = await serve.terminate()
            assert code == 0
        async with asyncio.timeout(10):
            while not process_gone(broker):  # noqa: ASYNC110 (another process, polled)
                await asyncio.sleep(0.05)
        # ... and the port is free for the next serve.
        endpoint = parse_mqtt_url(device.mqtt_url.get_secret_value())  # type: ignore[union-attr]
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection((endpoint.host, endpoint.port), 1),
        ):
            pass
    finally:
        serve.kill()


@pytest.mark.slow
async def test_attack_second_bridge_with_the_same_client_id_leaves_the_first_serving(
    admin: Admin, database_url: str, mqtt_url: str, prefix: str, tmp_path: Path
) -> None:
    """Two bridges, one client id: before, they took the session from each other for ever."""
    await _model(admin, [GOOD])
    client_id = f"bridge-shared-{secrets.token_hex(3)}"
    env = {
        "BRIDGE_DATABASE_URL": database_url,
        "BRIDGE_MQTT_URL": mqtt_url,
        "BRIDGE_TOPIC_PREFIX": prefix,
        "BRIDGE_SECRET": secrets.token_hex(32),
        "BRIDGE_CLIENT_ID": client_id,
    }
    first_addr = f"127.0.0.1:{free_port()}"
    first = Serve(tmp_path / "first.log", {**env, "BRIDGE_METRICS_ADDR": first_addr})
    second = Serve(tmp_path / "second.log", env)
    first.start()
    try:
        await first.wait_event("subscribed")
        await asyncio.sleep(YOUNG_SECONDS + 0.5)  # the first one is the running bridge
        second.start()
        code = await second.wait_exit(30)
        assert code is not None and code != 0, second.text()[-3000:]
        said = second.events("session_taken_over")
        assert len(said) == 1, second.text()[-3000:]
        assert said[0]["level"] == "error" and said[0]["client_id"] == client_id
        assert "BRIDGE_CLIENT_ID" in said[0]["msg"]
        # ... and its last line says the fix too, as one sentence, not a traceback.
        assert "error: config: Another MQTT connection uses" in second.text()
        assert "BRIDGE_CLIENT_ID" in second.text().splitlines()[-1]
        assert "Traceback" not in second.text()
        # The first one took its session back once and serves.
        assert len(first.events("session_taken_over")) == 1
        async with asyncio.timeout(15):
            while (await readiness(first_addr))[0] != 200:  # noqa: ASYNC110 (over HTTP)
                await asyncio.sleep(0.2)
        device = Settings(mqtt_url=SecretStr(mqtt_url), topic_prefix=prefix, secret="x" * 32)
        result = await activate(device, GOOD, model="atk-1", seal=True)
        assert result.ok, result.reply
        assert first.alive()
    finally:
        second.kill()
        code, _ = await first.terminate()
    assert code == 0


@pytest.mark.slow
async def test_attack_anonymous_client_with_the_bridges_client_id(
    admin: Admin, database_url: str, prefix: str, tmp_path: Path
) -> None:
    """On the embedded defaults (shipped broker config, --dev): take the bridge's session."""
    await _model(admin, [GOOD, "02:00:00:00:00:02"])
    serve, device = _embedded_serve(tmp_path, database_url, prefix)
    assert device.mqtt_url is not None
    endpoint = parse_mqtt_url(device.mqtt_url.get_secret_value())
    serve.start()
    try:
        subscribed = await serve.wait_event("subscribed")
        client_id = subscribed["client_id"]
        guess = f"bridge-{socket.gethostname()}"
        assert client_id != guess and len(client_id) > len(guess) + 20  # not guessable
        # The old default, guessed by an anonymous client: nothing happens to the bridge.
        async with mqtt.client(endpoint, guess, persistent=True):
            await asyncio.sleep(1.0)
        assert not serve.events("session_taken_over")
        # Stable across restarts: the same id (from the state directory), the same session.
        code, _ = await serve.terminate()
        assert code == 0
        serve.start()
        assert (await serve.wait_event("subscribed"))["client_id"] == client_id

        # Someone who learnt the id (a leaked log, say) takes the session: the bridge says
        # so, takes it back and answers again, a bounded number of times, then exits.
        await asyncio.sleep(YOUNG_SECONDS + 0.5)
        for n in range(1, MAX_TAKEOVERS + 1):
            await serve.wait_event("subscribed", count=n, timeout=15)  # back, after the last
            if n == 2:
                result = await activate(device, GOOD, model="atk-1", seal=True)
                assert result.ok, result.reply  # and answering again
            with contextlib.suppress(aiomqtt.MqttError):
                async with mqtt.client(endpoint, client_id, persistent=False):
                    await serve.wait_event("session_taken_over", count=n, timeout=15)
        code_after = await serve.wait_exit(15)
        assert code_after is not None and code_after != 0, serve.text()[-3000:]
        taken = serve.events("session_taken_over")
        assert len(taken) == MAX_TAKEOVERS
        assert all(t["client_id"] == client_id for t in taken)
        assert [t["action"] for t in taken] == ["reconnect"] * (MAX_TAKEOVERS - 1) + ["exit"]
    finally:
        serve.kill()


async def _flood(mqtt_url: str, prefix: str, macs: list[str]) -> None:
    """Publish one request per MAC from 20 connections, straight to the broker."""
    endpoint = parse_mqtt_url(mqtt_url)

    async def publisher(n: int) -> None:
        name = f"flood-{n}-{secrets.token_hex(3)}"
        async with mqtt.client(endpoint, name, persistent=False) as c:
            for i, mac in enumerate(macs[n::20]):
                body = _request(mac, f"f{n}-{i}")
                await c.publish(protocol.activate_topic(prefix, f"dev-{n}-{i}"), body, qos=1)

    await asyncio.gather(*(publisher(n) for n in range(20)))


@pytest.mark.slow
async def test_attack_connection_resets_with_requests_in_flight(
    admin: Admin, database_url: str, mqtt_url: str, prefix: str, tmp_path: Path
) -> None:
    """Before: after a reset with a backlog, workers swallowed their cancellation in
    aiomqtt's publish (Python 3.11's wait_for) and waited on the queue for ever: no
    reconnect, no answers, SIGTERM ignored, ready as ever."""
    macs = [f"02:00:00:{n >> 16:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}" for n in range(2000)]
    fresh = "02:00:FF:00:00:01"  # not one of the flood's
    await _model(admin, [*macs, fresh])
    broker = parse_mqtt_url(mqtt_url)
    addr = f"127.0.0.1:{free_port()}"
    async with resetting_proxy(broker.host, broker.port) as proxy:
        serve = Serve(
            tmp_path / "serve.log",
            {
                "BRIDGE_DATABASE_URL": database_url,
                "BRIDGE_MQTT_URL": f"mqtt://127.0.0.1:{proxy.port}",
                "BRIDGE_TOPIC_PREFIX": prefix,
                "BRIDGE_SECRET": secrets.token_hex(32),
                "BRIDGE_CLIENT_ID": f"bridge-reset-{secrets.token_hex(3)}",
                "BRIDGE_METRICS_ADDR": addr,
            },
        )
        serve.start()
        try:
            await serve.wait_event("subscribed")
            flooding = asyncio.create_task(_flood(mqtt_url, prefix, macs))
            resets = 0
            for _ in range(15):  # many resets, each with requests in flight
                await asyncio.sleep(0.4)
                resets += proxy.reset()  # 0 when it is between connections
            await flooding
            assert resets >= 8, resets
            assert serve.alive(), serve.text()[-3000:]

            # Readiness tells the truth while the bridge cannot reach the broker ...
            proxy.refusing = True
            proxy.reset()
            async with asyncio.timeout(5):
                while (status := await readiness(addr))[0] != 503:  # noqa: ASYNC110 (HTTP)
                    await asyncio.sleep(0.1)
            assert status[1]["broker"] == "not subscribed"
            proxy.refusing = False
            # ... and the bridge comes back and answers again.
            async with asyncio.timeout(30):
                while (await readiness(addr))[0] != 200:  # noqa: ASYNC110 (over HTTP)
                    await asyncio.sleep(0.2)
            device = Settings(mqtt_url=SecretStr(mqtt_url), topic_prefix=prefix, secret="x" * 32)
            result = await activate(device, fresh, model="atk-1", seal=True, timeout=30)
            assert result.ok, result.reply
            # One more reset in the middle of the backlog, then SIGTERM: it ends in time.
            proxy.reset()
            await asyncio.sleep(0.3)
        finally:
            code, took = await serve.terminate(timeout=20)
    assert code == 0, serve.text()[-3000:]
    assert took < 10, took  # the 5 s drain and a clean disconnect
    reconnects = serve.events("reconnect")
    assert len(reconnects) >= 6  # it did lose the broker that often, and came back


@pytest.mark.slow
async def test_attack_takeover_while_replies_are_on_their_way_is_seen(
    admin: Admin, database_url: str, mqtt_url: str, prefix: str, tmp_path: Path
) -> None:
    """Before: Mosquitto closing a connection whose replies it had not read yet ends in a
    reset, which the bridge took for a network failure: a takeover during a burst went
    unreported and uncounted (seen in CI, where a takeover met an activation's reply)."""
    macs = [f"02:00:01:{n >> 16:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}" for n in range(2000)]
    await _model(admin, macs)
    client_id = f"bridge-busy-{secrets.token_hex(6)}"
    serve = Serve(
        tmp_path / "serve.log",
        {
            "BRIDGE_DATABASE_URL": database_url,
            "BRIDGE_MQTT_URL": mqtt_url,
            "BRIDGE_TOPIC_PREFIX": prefix,
            "BRIDGE_SECRET": secrets.token_hex(32),
            "BRIDGE_CLIENT_ID": client_id,
        },
    )
    serve.start()
    try:
        await serve.wait_event("subscribed")
        await asyncio.sleep(YOUNG_SECONDS + 0.5)  # a takeover of a young bridge ends it
        endpoint = parse_mqtt_url(mqtt_url)
        for n in range(1, 3):
            flooding = asyncio.create_task(_flood(mqtt_url, prefix, macs[(n - 1) :: 2]))
            await serve.wait_event("activation", count=50 * n, timeout=30)  # replies flowing
            with contextlib.suppress(aiomqtt.MqttError):
                async with mqtt.client(endpoint, client_id, persistent=False):
                    await serve.wait_event("session_taken_over", count=n, timeout=15)
            await flooding
            await serve.wait_event("subscribed", count=n + 1, timeout=15)
    finally:
        await serve.terminate()
