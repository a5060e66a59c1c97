"""Serving an ASGI application with uvicorn until an event says stop; the only uvicorn importer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from bridge.errors import ConfigError

log = logging.getLogger("bridge.api")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller stops it through an event."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_http(
    app: ASGIApp,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` until ``stop`` is set; ``ready`` is set once it listens."""
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
        )
    )
    # Bind here rather than in uvicorn, which answers a port in use with sys.exit.
    sock = _listen(host, port)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="bridge-api-http")
    try:
        while not server.started and not serving.done():  # noqa: ASYNC110 (a flag, no event)
            await asyncio.sleep(0.02)
        if not server.started:
            await serving
            raise ConfigError(f"the HTTP API stopped before listening on {host}:{port}")
        log.info(
            "HTTP API listening",
            extra={"event": "api_listening", "url": f"http://{host}:{port}/"},
        )
        if ready is not None:
            ready.set()
        stopping = asyncio.create_task(stop.wait(), name="bridge-api-stop")
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        server.should_exit = True
        async with asyncio.timeout(15):
            await asyncio.wait({serving})
        sock.close()
    serving.result()  # a crash of the server is a bug: let it be seen


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"the HTTP API cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock
