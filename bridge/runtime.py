"""Wiring for ``bridge serve`` and ``bridge api``: settings in, services out, until a signal.

Builds the store, the provisioner and the MQTT service from one settings object,
runs them beside a housekeeping task (and the HTTP API when asked), and stops all
of it on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator

from bridge import embedded, health, keys
from bridge.config import Settings
from bridge.dynsec import DynSec
from bridge.errors import BridgeError, ConfigError, Unavailable
from bridge.logins import LoginNamespace
from bridge.metrics import Metrics
from bridge.provisioner import Provisioner
from bridge.records import RateLimit
from bridge.service import BridgeService
from bridge.store import Store

log = logging.getLogger("bridge.runtime")

PURGE_EVERY_SECONDS = 60.0
#: After SIGTERM/SIGINT the bridge drains for its drain bound (5 s) and closes its
#: connections; whatever still runs this long after the signal is cut short: the process
#: exits with status 1 (and its embedded broker with it), never hangs.
STOP_DEADLINE_SECONDS = 15.0


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    ready: asyncio.Event | None = None,
    metrics: Metrics | None = None,
    api: bool = False,
    persistent_session: bool | None = None,
) -> None:
    """Run the bridge until ``stop`` is set or a SIGTERM/SIGINT arrives.

    ``ready`` is set while the bridge is subscribed and serving; ``metrics`` (a fresh
    registry by default) is what ``/metrics`` shows when ``BRIDGE_METRICS_ADDR`` is set.
    With ``api``, the HTTP API and owner page are served beside it, on the same store.
    ``persistent_session`` overrides the service's choice of session (see
    :class:`BridgeService`); ``--workers`` keeps one in its share group.
    """
    secret = settings.server_secret()  # refuse to start without one, before anything else
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    # The embedded database starts silently, before the broker opens its port (so a
    # client that sees the port finds the database up too); the broker's choice
    # (configured, mosquitto or the in-process amqtt) is the first line logged.
    dsn = embedded.database_url(settings)
    # Signals first: SIGTERM while the broker or the database is still starting stops too,
    # and the stop deadline covers every cleanup below.
    with _signals_set(stop):
        async with (
            embedded.broker(settings) as access,
            Store.open(dsn, pool_size=settings.db_pool_size, eager=False) as store,
            _device_logins(settings, access) as (logins, accounts),
        ):
            await _check_schema(store, migrate=embedded.is_embedded_database(settings))
            metrics.watch_pool(store.pool_stats)
            provisioner = Provisioner(
                store,
                keys.KeyHasher(secret, settings.previous_server_secrets()),
                keys.ReplayCipher(secret, settings.previous_server_secrets()),
                grace_seconds=settings.grace_seconds,
                retry_after=settings.retry_after_seconds,
                limit=RateLimit(
                    settings.rate_limit_failures,
                    settings.rate_limit_window_seconds,
                    settings.rate_limit_identifier_failures,
                    settings.rate_limit_model_failures,
                ),
                accounts=accounts,
                enrollment=keys.EnrollmentCipher(secret, settings.previous_server_secrets()),
                logins=logins,
                on_guessing=metrics.guessing,
            )
            service = BridgeService(
                settings,
                access.endpoint,
                provisioner,
                ready=ready,
                metrics=metrics,
                persistent=persistent_session,
            )
            probe = _readiness(service, store, metrics)
            async with contextlib.AsyncExitStack() as stack:
                if settings.metrics_addr:
                    await stack.enter_async_context(
                        health.listening(settings.metrics_addr, metrics, probe)
                    )
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(
                            _purge(store, stop, settings.rate_limit_window_seconds),
                            name="bridge-purge",
                        )
                        if api:
                            tg.create_task(_run_api(settings, store, stop, None), name="bridge-api")
                        if accounts is not None:
                            tg.create_task(
                                accounts.keep_learning(stop), name="bridge-dynsec-logins"
                            )
                        try:
                            await service.run(stop)
                        finally:
                            stop.set()  # the purge and the API end with it, whatever ended it
                except* BridgeError as group:
                    # One sentence for the operator (e.g. a session taken over), printed by
                    # the command line as such: not a traceback of the task group.
                    raise group.exceptions[0] from None
    log.info("stopped", extra={"event": "stopped"})


#: A readiness probe waits this long for the database before calling it unreachable.
PING_TIMEOUT_SECONDS = 2.0


def _readiness(service: BridgeService, store: Store, metrics: Metrics) -> health.ReadinessProbe:
    async def probe() -> health.Readiness:
        try:
            async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                await store.ping()
            database = True
        except (Unavailable, TimeoutError):
            metrics.db_errors.inc()
            database = False
        return health.Readiness(broker=service.ready.is_set(), database=database)

    return probe


@contextlib.asynccontextmanager
async def _device_logins(
    settings: Settings, access: embedded.BrokerAccess
) -> AsyncIterator[tuple[LoginNamespace, DynSec | None]]:
    """Which client ids are operators' logins, and the dynamic-security admin connection
    when devices get broker logins."""
    logins = LoginNamespace(
        embedded.operator_logins(settings),
        bridge_client_id=settings.mqtt_client_id,
        # A worker of `serve --workers N` reserves every worker's id, not only its own.
        workers_client_id=settings.workers_client_id,
    )
    if access.admin is None:
        yield logins, None
        return
    async with DynSec(
        access.admin,
        client_id=f"{settings.mqtt_client_id}-dynsec"[:128],
        topics=settings.device_topics,
        namespace=logins,
        guard_prefix=settings.topic_prefix,
    ) as dynsec:
        yield logins, dynsec


async def serve_api(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Run only the HTTP API and owner page (`bridge api`) until ``stop`` or a signal."""
    stop = stop or asyncio.Event()
    dsn = embedded.database_url(settings)
    async with Store.open(dsn, pool_size=settings.db_pool_size, eager=False) as store:
        await _check_schema(store, migrate=embedded.is_embedded_database(settings))
        with _signals_set(stop):
            await _run_api(settings, store, stop, ready)
    log.info("stopped", extra={"event": "stopped"})


async def _run_api(
    settings: Settings, store: Store, stop: asyncio.Event, ready: asyncio.Event | None
) -> None:
    # FastAPI and uvicorn are loaded only when the API is served.
    from bridge.web import app, server  # noqa: PLC0415

    await server.run_http(
        app.create_app(store, settings), settings.api_host, settings.api_port, stop, ready=ready
    )


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
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PURGE_EVERY_SECONDS):
                await stop.wait()
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
    deadline: list[threading.Timer] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, _on_signal, stop, sig, deadline)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for timer in deadline:
            timer.cancel()  # stopped in time


def _on_signal(stop: asyncio.Event, sig: signal.Signals, deadline: list[threading.Timer]) -> None:
    log.info("signal received; stopping", extra={"event": "signal", "signal": sig.name})
    stop.set()
    if not deadline:
        # A thread, not a task: it fires even when the event loop itself is stuck.
        timer = threading.Timer(STOP_DEADLINE_SECONDS, _stop_overdue)
        timer.daemon = True
        timer.start()
        deadline.append(timer)


def _stop_overdue() -> None:
    log.error(
        "still not stopped %.0f s after the signal; exiting",
        STOP_DEADLINE_SECONDS,
        extra={"event": "stop_overdue"},
    )
    logging.shutdown()
    os._exit(1)
