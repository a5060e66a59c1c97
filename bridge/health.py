"""The operations listener: ``/metrics``, ``/healthz`` and ``/readyz`` over plain HTTP.

A deliberately tiny HTTP/1.1 responder on ``asyncio.start_server`` (one request per
connection, then close): Prometheus scrapers, container probes and ``bridge check``
need nothing more, and it keeps an HTTP framework out of the dependencies. It runs
in the bridge's own event loop, so ``/healthz`` answering means the loop is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST

from bridge import embedded, mqtt
from bridge.config import Settings
from bridge.errors import ConfigError, Unavailable
from bridge.metrics import Metrics
from bridge.store import Store

log = logging.getLogger("bridge.health")

#: A client that has not sent its request line and headers by then is dropped.
READ_TIMEOUT_SECONDS = 5.0
_MAX_HEADER_LINES = 100


@dataclass(frozen=True)
class Readiness:
    """Whether the bridge can serve: subscribed to the broker and the database answers.

    ``direct`` readiness is checked from outside a bridge (``bridge check`` without a
    listener): there the broker can only be "reachable", not "subscribed".
    """

    broker: bool
    database: bool
    direct: bool = False

    @property
    def ready(self) -> bool:
        return self.broker and self.database

    def parts(self) -> dict[str, str]:
        if self.direct:
            broker = "reachable" if self.broker else "unreachable"
        else:
            broker = "subscribed" if self.broker else "not subscribed"
        return {"broker": broker, "database": "reachable" if self.database else "unreachable"}

    def as_dict(self) -> dict[str, object]:
        return {"ready": self.ready, **self.parts()}

    def sentence(self) -> str:
        if self.ready:
            return "The bridge is ready."
        down = [f"the broker is {self.parts()['broker']}"] if not self.broker else []
        down += ["the database is unreachable"] if not self.database else []
        return f"The bridge is not ready: {' and '.join(down)}."


ReadinessProbe = Callable[[], Awaitable[Readiness]]


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) to its parts."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
        raise ConfigError(f"{addr!r} is not a listen address; use host:port, e.g. 127.0.0.1:9108")
    return host.strip("[]"), int(port)


@contextlib.asynccontextmanager
async def listening(addr: str, metrics: Metrics, probe: ReadinessProbe) -> AsyncIterator[None]:
    """Serve the three endpoints on ``addr`` for the duration of the block."""
    host, port = parse_addr(addr)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _answer(reader, writer, metrics, probe)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that went away or spoke nonsense; nothing to tell anyone
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(handle, host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {addr} for metrics and health: {exc}") from exc
    log.info(
        "metrics and health listening",
        extra={"event": "metrics_listening", "addr": addr, "paths": "/metrics /healthz /readyz"},
    )
    try:
        yield
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=2)


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    metrics: Metrics,
    probe: ReadinessProbe,
) -> None:
    async with asyncio.timeout(READ_TIMEOUT_SECONDS):
        request_line = (await reader.readline()).decode("latin-1").split()
        for _ in range(_MAX_HEADER_LINES):  # headers carry nothing we need
            if (await reader.readline()) in (b"\r\n", b"\n", b""):
                break
    if len(request_line) != 3:
        return
    method, target, _version = request_line
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        status, ctype, body = 405, "text/plain", b"only GET and HEAD\n"
    elif path == "/metrics":
        status, ctype, body = 200, CONTENT_TYPE_LATEST, metrics.exposition()
    elif path == "/healthz":
        status, ctype, body = 200, "text/plain", b"ok\n"
    elif path == "/readyz":
        readiness = await probe()
        status = 200 if readiness.ready else 503
        ctype, body = "application/json", json.dumps(readiness.as_dict()).encode() + b"\n"
    else:
        status, ctype, body = 404, "text/plain", b"not found; try /metrics, /healthz, /readyz\n"
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
    head = (
        f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head if method == "HEAD" else head + body)
    await writer.drain()


async def fetch(addr: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``path`` from a listener at ``addr``: (status, body). For ``bridge check``."""
    host, port = parse_addr(addr)
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (a wildcard bind is reached on loopback)
        host = "127.0.0.1" if host != "::" else "::1"
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError("the listener's answer is not HTTP")
    return int(status_line[1]), body


async def ask(addr: str) -> Readiness:
    """A running bridge's own answer on ``/readyz``."""
    try:
        status, body = await fetch(addr, "/readyz")
        answer = json.loads(body)
    except (OSError, TimeoutError, ValueError) as exc:
        raise Unavailable(
            f"Nothing answers /readyz on {addr}; is `bridge serve` running with "
            "BRIDGE_METRICS_ADDR set to that address?"
        ) from exc
    if not isinstance(answer, dict) or status not in (200, 503):
        raise Unavailable(f"The listener on {addr} did not answer like a bridge.")
    return Readiness(
        broker=answer.get("broker") == "subscribed",
        database=answer.get("database") == "reachable",
    )


#: How long ``bridge check`` gives each service when it checks them itself.
DIRECT_TIMEOUT_SECONDS = 5.0


async def check_directly(settings: Settings) -> Readiness:
    """Without a listener: do the database and the broker the bridge would use answer?"""
    try:
        async with (
            asyncio.timeout(DIRECT_TIMEOUT_SECONDS),
            Store.open(embedded.database_url(settings), pool_size=1) as store,
        ):
            await store.ping()
        database = True
    except (Unavailable, TimeoutError):
        database = False
    endpoint = embedded.client_endpoint(settings)
    client_id = f"bridge-check-{secrets.token_hex(4)}"
    try:
        async with (
            asyncio.timeout(DIRECT_TIMEOUT_SECONDS),
            mqtt.connect(endpoint, client_id, persistent=False),
        ):
            broker = True
    except (mqtt.MqttError, OSError, TimeoutError):
        broker = False
    return Readiness(broker=broker, database=database, direct=True)
