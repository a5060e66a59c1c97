"""The operations listener's HTTP handling and the parsing around it (no broker, no database:
readiness comes from a probe function, as the runtime passes one in)."""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge import health
from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.metrics import Metrics
from tests.services import free_port


@pytest.mark.parametrize(
    ("addr", "parsed"),
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9108", ("::1", 9108)),
        ("metrics.local:65535", ("metrics.local", 65535)),
    ],
)
def test_parse_addr(addr: str, parsed: tuple[str, int]) -> None:
    assert health.parse_addr(addr) == parsed


@pytest.mark.parametrize("addr", ["9108", ":9108", "host:", "host:0", "host:70000", "host:x"])
def test_parse_addr_refuses(addr: str) -> None:
    with pytest.raises(ConfigError, match="not a listen address"):
        health.parse_addr(addr)


def test_metrics_addr_setting_is_validated() -> None:
    assert load_settings(metrics_addr="127.0.0.1:9108").metrics_addr == "127.0.0.1:9108"
    assert load_settings().metrics_addr is None
    with pytest.raises(ConfigError, match="metrics_addr"):
        load_settings(metrics_addr="localhost")


def test_readiness_sentences() -> None:
    assert health.Readiness(broker=True, database=True).sentence() == "The bridge is ready."
    assert health.Readiness(broker=False, database=False).sentence() == (
        "The bridge is not ready: the broker is not subscribed and the database is unreachable."
    )
    direct = health.Readiness(broker=False, database=True, direct=True)
    assert direct.parts() == {"broker": "unreachable", "database": "reachable"}


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return answer


async def test_listener_routes_and_methods() -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    state = {"broker": True, "database": True}
    metrics = Metrics()
    metrics.answered("ok", 0.004)

    async def probe() -> health.Readiness:
        return health.Readiness(**state)

    async with health.listening(addr, metrics, probe):
        status, body = await health.fetch(addr, "/metrics")
        assert status == 200
        assert b'bridge_activations_total{outcome="ok"} 1.0' in body
        assert await health.fetch(addr, "/healthz") == (200, b"ok\n")
        assert (await health.fetch(addr, "/readyz"))[0] == 200
        state["database"] = False
        status, body = await health.fetch(addr, "/readyz?verbose=1")
        assert status == 503
        assert json.loads(body)["database"] == "unreachable"
        assert (await health.fetch(addr, "/other"))[0] == 404
        posted = await _raw(port, b"POST /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert posted.startswith(b"HTTP/1.1 405 ")
        head = await _raw(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        assert await _raw(port, b"garbage\r\n\r\n") == b""  # no answer, no crash
        assert await health.fetch(addr, "/healthz") == (200, b"ok\n")  # still serving
    with pytest.raises(ConnectionRefusedError):
        await health.fetch(addr, "/healthz")


async def test_listener_refuses_a_busy_address() -> None:
    port = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        with pytest.raises(ConfigError, match="cannot listen on"):
            async with health.listening(f"127.0.0.1:{port}", Metrics(), _never_called):
                pass
    finally:
        blocker.close()


async def _never_called() -> health.Readiness:
    raise AssertionError("not probed")


async def test_a_wildcard_listener_is_asked_on_loopback() -> None:
    # The Docker image listens on 0.0.0.0:9108 and its HEALTHCHECK asks that address.
    addr = f"0.0.0.0:{free_port()}"

    async def probe() -> health.Readiness:
        return health.Readiness(broker=True, database=True)

    async with health.listening(addr, Metrics(), probe):
        assert (await health.ask(addr)).ready
