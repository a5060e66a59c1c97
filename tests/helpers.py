"""Helpers shared by the integration tests: a bridge running in the test's loop, a device."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.admin import Admin
from bridge.client import ActivationResult, activate_device
from bridge.config import Settings
from bridge.embedded import client_endpoint
from bridge.metrics import Metrics
from bridge.runtime import serve
from bridge.tokens import create_token
from tests.services import free_port, wait_for_port


@dataclass
class RunningBridge:
    settings: Settings
    stop: asyncio.Event
    ready: asyncio.Event
    task: asyncio.Task[None]

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=15)


async def start_bridge(settings: Settings, metrics: Metrics | None = None) -> RunningBridge:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(settings, stop, ready=ready, metrics=metrics), name="test-bridge"
    )
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises what stopped it
    if waiter not in done:
        waiter.cancel()
        stop.set()
        raise TimeoutError("the bridge did not subscribe within 15 s")
    return RunningBridge(settings, stop, ready, task)


async def activate(
    settings: Settings,
    identifier: str,
    *,
    vendor: str = "acme",
    model: str = "thermo-1",
    seal: bool = True,
    **kwargs: Any,
) -> ActivationResult:
    """One activation through the real broker, with the reference device client.

    Sealed by default, as models deliver keys unless their vendor chose plaintext;
    ``result.key`` is the unsealed key either way.
    """
    assert settings.mqtt_url is not None
    kwargs.setdefault("timeout", 10.0)
    return await activate_device(
        client_endpoint(settings),
        prefix=settings.topic_prefix,
        vendor=vendor,
        model=model,
        identifier=identifier,
        seal=seal,
        **kwargs,
    )


async def raw_exchange(
    settings: Settings,
    payload: bytes,
    *,
    client_id: str = "raw-device",
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Publish raw bytes on a device's activation topic and return the JSON reply."""
    import json  # noqa: PLC0415

    from bridge import mqtt, protocol  # noqa: PLC0415

    assert settings.mqtt_url is not None
    endpoint = client_endpoint(settings)
    async with asyncio.timeout(timeout), mqtt.client(endpoint, client_id, persistent=False) as c:
        await c.subscribe(protocol.reply_topic(settings.topic_prefix, client_id), qos=1)
        await c.publish(protocol.activate_topic(settings.topic_prefix, client_id), payload, qos=1)
        async for message in c.messages:
            assert isinstance(message.payload, bytes)
            reply: dict[str, Any] = json.loads(message.payload)
            return reply
    raise AssertionError("the broker closed the stream")


@dataclass(frozen=True)
class ApiServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def api_server(settings: Settings, **env: str) -> Iterator[ApiServer]:
    """`bridge api` as a real process on a free port, on the test's database."""
    assert settings.database_url is not None
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    environment.update(BRIDGE_DATABASE_URL=settings.database_url.get_secret_value(), **env)
    log = Path(tempfile.mkdtemp(prefix="bridge-api-")) / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_port("127.0.0.1", port, process, "bridge api")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log.read_text()}") from exc
        yield ApiServer(f"http://127.0.0.1:{port}", process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def bearer(admin: Admin, role: str, subject: str | None = None) -> dict[str, str]:
    """An Authorization header with a new token of ``role`` (for ``subject``)."""
    issued = await create_token(admin.store, role, subject, actor="test")
    return {"Authorization": f"Bearer {issued.token}"}


def token_secret(token: str) -> str:
    """The secret part of an API token ``bt_<12 hex>_<43 of base64url>``.

    By position: the secret may hold "_" itself, and a split at the last "_" sometimes
    kept only a few characters, which then turned up anywhere by chance.
    """
    secret = token[len("bt_") + 12 + 1 :]
    assert len(secret) == 43, "not an API token"
    return secret
