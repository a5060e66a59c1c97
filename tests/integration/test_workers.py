"""``bridge serve --workers N``: N processes share the requests, and a killed one loses none.

Against a real `bridge serve --workers 2` process tree, the test session's Mosquitto
and its PostgreSQL database. The devices publish once and never retry, so every
request must be answered even though a worker is SIGKILLed in the middle of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bridge import mqtt, protocol
from bridge.admin import Admin
from bridge.config import Settings, parse_mqtt_url
from bridge.errors import ConfigError
from bridge.keys import KeyHasher
from bridge.workers import supervise, worker_settings
from tests.conftest import TEST_SECRET

REPO = Path(__file__).resolve().parents[2]
DEVICES = 200


def _mac(n: int) -> str:
    return f"0200000E{n:04X}"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    found.append(int(entry.name))
    return found


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
    return found


async def _until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_workers_share_the_requests_and_a_killed_worker_loses_none(
    settings: Settings, admin: Admin, tmp_path: Path
) -> None:
    await admin.add_model(
        "acme", "workers-1", kind="mac", claim_required=False, plaintext_keys=True
    )
    await admin.approve("acme", "workers-1", [_mac(n) for n in range(DEVICES)])
    log = tmp_path / "serve.log"
    assert settings.database_url is not None and settings.mqtt_url is not None
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
        "PYTHONPATH": str(REPO),
        "BRIDGE_DATABASE_URL": settings.database_url.get_secret_value(),
        "BRIDGE_MQTT_URL": settings.mqtt_url.get_secret_value(),
        "BRIDGE_TOPIC_PREFIX": settings.topic_prefix,
        "BRIDGE_SECRET": TEST_SECRET,
        "BRIDGE_CLIENT_ID": settings.mqtt_client_id,
        "BRIDGE_MAX_IN_FLIGHT": "2",  # a backlog builds up, and the kill lands in it
    }
    with log.open("ab") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--workers", "2"],
            env=env,
            stdout=out,
            stderr=out,
        )
    endpoint = parse_mqtt_url(settings.mqtt_url.get_secret_value())
    answered: dict[str, dict[str, Any]] = {}
    try:
        await _until("both workers subscribed", lambda: len(_events(log, "subscribed")) >= 2, 60)
        ids = {e["client_id"] for e in _events(log, "subscribed")}
        assert ids == {f"{settings.mqtt_client_id}-w0", f"{settings.mqtt_client_id}-w1"}
        workers = _children(supervisor.pid)
        assert len(workers) == 2, workers
        async with contextlib.AsyncExitStack() as stack:
            monitor = await stack.enter_async_context(
                mqtt.client(endpoint, f"monitor-{os.getpid()}", persistent=False)
            )
            await monitor.subscribe(f"{settings.topic_prefix}/reply/+", qos=1)

            async def collect() -> None:
                async for message in monitor.messages:
                    assert isinstance(message.payload, bytes)
                    answered[message.topic.value.rsplit("/", 1)[1]] = json.loads(message.payload)

            collector = asyncio.create_task(collect())
            devices = []
            for n in range(DEVICES):
                cid = f"wk-{os.getpid()}-{n:03d}"
                c = await stack.enter_async_context(mqtt.client(endpoint, cid, persistent=False))
                devices.append((n, cid, c))
            for n, cid, c in devices:  # each publishes once and never retries
                body = {
                    "request_id": f"r{n}",
                    "vendor": "acme",
                    "model": "workers-1",
                    "identifier": _mac(n),
                }
                topic = protocol.activate_topic(settings.topic_prefix, cid)
                await c.publish(topic, json.dumps(body).encode(), 1)
            await _until("20 replies", lambda: len(answered) >= 20, 30)
            os.kill(workers[0], signal.SIGKILL)
            at_kill = len(answered)
            await _until("all replies", lambda: len(answered) >= DEVICES, 90)
            collector.cancel()
        restarts = _events(log, "worker_restart")
        assert len(restarts) == 1, restarts
        assert at_kill < DEVICES  # the kill did land with requests still unanswered
        assert len(_children(supervisor.pid)) == 2  # the killed one runs again
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, 30) == 0
        assert _children(supervisor.pid) == []
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert all(reply["status"] == "ok" for reply in answered.values()), answered
    hasher = KeyHasher(TEST_SECRET.encode())
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        rows = {
            r["identifier"]: r["key_hash"]
            for r in await conn.fetch(
                "SELECT d.identifier, d.key_hash FROM devices d JOIN models m ON m.id = d.model_id "
                "WHERE m.model = 'workers-1'"
            )
        }
    finally:
        await conn.close()
    assert len(answered) == DEVICES
    for cid, reply in answered.items():
        assert hasher.verify(reply["key"], rows[_mac(int(cid.rsplit("-", 1)[1]))])


def test_each_worker_has_its_own_client_id_and_metrics_port(settings: Settings) -> None:
    given = settings.model_copy(update={"metrics_addr": "127.0.0.1:9108", "share_group": None})
    first, second = worker_settings(given, 0), worker_settings(given, 1)
    assert first.mqtt_client_id == f"{settings.mqtt_client_id}-w0"
    assert second.mqtt_client_id == f"{settings.mqtt_client_id}-w1"
    assert (first.metrics_addr, second.metrics_addr) == ("127.0.0.1:9108", "127.0.0.1:9109")
    assert first.share_group == second.share_group == "workers"


async def test_workers_need_a_configured_database_and_broker(settings: Settings) -> None:
    embedded = settings.model_copy(update={"database_url": None})
    with pytest.raises(ConfigError, match="BRIDGE_DATABASE_URL and BRIDGE_MQTT_URL"):
        await supervise(embedded, 2)
    with pytest.raises(ConfigError, match="--api serves from one process"):
        await supervise(settings, 2, api=True)
