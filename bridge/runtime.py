"""Wiring for ``bridge serve``: settings in, a running service out, until a signal.

Builds the store, the provisioner and the MQTT service from one settings object,
runs them beside a housekeeping task, and stops all of it on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator

from bridge import embedded, keys
from bridge.config import Settings
from bridge.dynsec import DynSec
from bridge.errors import ConfigError, Unavailable
from bridge.provisioner import Provisioner
from bridge.records import RateLimit
from bridge.service import BridgeService
from bridge.store import Store

log = logging.getLogger("bridge.runtime")

PURGE_EVERY_SECONDS = 60.0


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the bridge until ``stop`` is set or a SIGTERM/SIGINT arrives.

    ``ready`` is set while the bridge is subscribed and serving.
    """
    secret = settings.server_secret()  # refuse to start without one, before anything else
    stop = stop or asyncio.Event()
    dsn = embedded.database_url(settings)
    with embedded.broker(settings) as access:
        async with (
            Store.open(dsn, pool_size=settings.db_pool_size, eager=False) as store,
            _device_logins(settings, access) as accounts,
        ):
            await _check_schema(store, migrate=embedded.is_embedded_database(settings))
            provisioner = Provisioner(
                store,
                keys.KeyHasher(secret, settings.previous_server_secrets()),
                keys.ReplayCipher(secret, settings.previous_server_secrets()),
                grace_seconds=settings.grace_seconds,
                retry_after=settings.retry_after_seconds,
                limit=RateLimit(settings.rate_limit_failures, settings.rate_limit_window_seconds),
                accounts=accounts,
            )
            service = BridgeService(settings, access.endpoint, provisioner, ready=ready)
            with _signals_set(stop):
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(
                        _purge(store, stop, settings.rate_limit_window_seconds),
                        name="bridge-purge",
                    )
                    await service.run(stop)
    log.info("stopped", extra={"event": "stopped"})


@contextlib.asynccontextmanager
async def _device_logins(
    settings: Settings, access: embedded.BrokerAccess
) -> AsyncIterator[DynSec | None]:
    """The dynamic-security admin connection, when devices get broker logins."""
    if access.admin is None:
        yield None
        return
    async with DynSec(
        access.admin,
        client_id=f"{settings.mqtt_client_id}-dynsec"[:128],
        topics=settings.device_topics,
    ) as dynsec:
        yield dynsec


async def _check_schema(store: Store, *, migrate: bool) -> None:
    try:
        if migrate:
            await store.migrate()
            return
        pending = await store.pending_migrations()
    except Unavailable:
        log.warning(
            "database not reachable yet; requests get 'unavailable' until it is",
            extra={"event": "db_unavailable"},
        )
        return
    if pending:
        raise ConfigError(
            f"the database schema is missing {len(pending)} migration(s) "
            f"({', '.join(pending)}); run `bridge migrate` first"
        )


async def _purge(store: Store, stop: asyncio.Event, window_seconds: int) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=PURGE_EVERY_SECONDS)
        if stop.is_set():
            return
        try:
            purged = await store.purge_replies()
            await store.purge_attempts(window_seconds)
        except Unavailable:
            continue
        if purged:
            log.info("purged expired replies", extra={"event": "purge", "count": purged})


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("signal received; stopping", extra={"event": "signal", "signal": sig.name})
    stop.set()
