"""Connecting to PostgreSQL: the pool, multi-host failover, pooler options.

Driver errors that mean "the database cannot be reached now" are translated here, once,
into :class:`bridge.errors.Unavailable` (:func:`reachable`); so is a deadlock that
sending the statement again did not get past (:func:`retrying_deadlocks`). Anything else
from the driver is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from bridge.errors import ConfigError, Unavailable

#: The pool type, for modules that hold one without importing the driver.
Pool = asyncpg.Pool

_STATEMENT_CACHE_SIZE = 100  # asyncpg's default, kept unless a pooler is in front
_CONNECT_TIMEOUT = 10.0  # seconds to open a connection, shared among a DSN's hosts
_MIN_HOST_TIMEOUT = 2.0

_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    # A multi-host DSN (target_session_attrs=read-write) during a failover: every host
    # that answers is a standby, and the new primary is not promoted yet.
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    # A pooled connection to a server that was a primary and is a standby now.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


def _lost_connection(exc: asyncpg.InterfaceError) -> bool:
    # asyncpg reports a dropped connection and a caller's mistake (say, a wrong number
    # of arguments) with the same class: only the first is the database being away.
    text = str(exc)
    return "closed" in text or "closing" in text


def _pooler_options(dsn: str) -> tuple[str, int]:
    """The DSN for asyncpg and its statement cache size, from the ``pgbouncer`` parameter.

    ``pgbouncer=true`` in the DSN's query says a pooler in transaction mode is in front:
    asyncpg's named prepared statements would then be prepared on one server connection
    and executed on another, so the cache is turned off (asyncpg then sends each
    statement unnamed, parsed and executed in one exchange). The parameter is the
    bridge's, not PostgreSQL's: it is removed before asyncpg sees the DSN.
    """
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [value for name, value in query if name == "pgbouncer"]
    if not flags:
        return dsn, _STATEMENT_CACHE_SIZE
    if flags[-1].lower() not in ("true", "false", "1", "0", "on", "off", "yes", "no"):
        raise ConfigError("the database URL's pgbouncer parameter must be true or false")
    rest = urlencode([(name, value) for name, value in query if name != "pgbouncer"])
    behind = flags[-1].lower() in ("true", "1", "on", "yes")
    return urlunsplit(parts._replace(query=rest)), 0 if behind else _STATEMENT_CACHE_SIZE


def _one_dsn_per_host(dsn: str) -> list[str]:
    """The hosts of a multi-host DSN (``host1:port1,host2:port2``), each as a DSN of its own."""
    parts = urlsplit(dsn)
    login, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return [dsn]
    return [urlunsplit(parts._replace(netloc=f"{login}{at}{host}")) for host in hosts.split(",")]


def _connect_to_each(hosts: list[str], timeout: float) -> Any:
    """A connect function for the pool that gives each host its own share of ``timeout``.

    asyncpg spends one timeout on all the hosts of a DSN, in order. On a network, a host
    that is gone swallows packets instead of refusing, so a dead first host would use up
    the whole timeout and the primary behind it would never be reached: after a failover
    the bridge could not open a single connection while the old primary is away.
    libpq applies its connect timeout to each host; so does this.
    """
    per_host = max(_MIN_HOST_TIMEOUT, timeout / len(hosts))

    async def connect(dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection:
        kwargs["timeout"] = per_host
        failure: BaseException | None = None
        for host in hosts:
            try:
                return await asyncpg.connect(host, **kwargs)
            except _UNREACHABLE as exc:  # refused, silent, a standby, starting up
                failure = exc
        assert failure is not None  # at least one host was tried
        raise failure

    return connect


def _busy_connection(exc: asyncpg.exceptions.InternalClientError) -> bool:
    # Seen once in the failover bench (tests/ha), right after a promotion: a pooled
    # connection handed out while asyncpg still consumed the server's answer to an
    # earlier, failed exchange. The statement was not sent, so nothing was decided:
    # the request is answered `unavailable` and retried, instead of ending the service.
    return "another operation" in str(exc)


_T = TypeVar("_T")
#: Times a statement rolled back to break a deadlock is sent again before its error stands.
DEADLOCK_RETRIES = 3


async def retrying_deadlocks(call: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``call`` (one statement, its own transaction) again when PostgreSQL chose it
    to break a deadlock; called inside :func:`reachable`, which answers ``Unavailable``
    for the last one.

    Some cycles cannot be ruled out by taking locks in one order: the device path's
    statements each lock their client id first, then shared counters (throttle.sql) and
    rows, and a batch of activations holds some of those while it waits for the next
    row's client id, so a single refusal or activation can close a cycle with it; an
    unapproval locks its devices in identifier order, the batch in client id order; an
    approval can meet a bulk import's rows. PostgreSQL rolls one of them back whole, so
    nothing of it was decided or written and sending it again is safe. Without this the
    device got "internal error" for a deadlock (and its audit row was lost), and the
    HTTP API answered 500.
    """
    for attempt in range(DEADLOCK_RETRIES):
        try:
            return await call()
        except asyncpg.DeadlockDetectedError:
            # The other side holds its locks until it commits: let it go first.
            await asyncio.sleep(0.01 * (attempt + 1))
    return await call()


@contextlib.asynccontextmanager
async def reachable() -> AsyncIterator[None]:
    """Translates "the database cannot be reached now" into :class:`Unavailable`, and a
    deadlock that got past :func:`retrying_deadlocks` (or where the work is more than
    one statement, so it is not sent again) too: the database was there, and the
    request may be repeated as it is; it is no bug.
    """
    try:
        yield
    except _UNREACHABLE as exc:
        raise Unavailable("The database cannot be reached right now.") from exc
    except asyncpg.DeadlockDetectedError as exc:
        raise Unavailable(
            "The database rolled this request back to break a deadlock with others "
            "changing the same rows; try again in a second.",
            retry_after=1,
        ) from exc
    except asyncpg.exceptions.InternalClientError as exc:
        if not _busy_connection(exc):
            raise
        raise Unavailable("The database cannot be reached right now.") from exc
    except asyncpg.InterfaceError as exc:
        if not _lost_connection(exc):
            raise
        raise Unavailable("The database cannot be reached right now.") from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool without asyncpg's default reset query.

    That query (unlock advisory locks, CLOSE ALL, UNLISTEN, RESET ALL) is a second round
    trip on every release, doubling the database work of an activation. No statement
    here leaves session state behind: no SET, LISTEN or cursor, and every advisory lock
    is transaction-level. An open transaction is still rolled back by the pool.
    """


@contextlib.asynccontextmanager
async def open_pool(dsn: str, *, pool_size: int, eager: bool) -> AsyncIterator[asyncpg.Pool]:
    """A new pool on ``dsn``, closed when the block ends; ``eager=False`` starts while
    the database is down."""
    try:
        dsn, statement_cache_size = _pooler_options(dsn)
        hosts = _one_dsn_per_host(dsn)
        async with reachable():
            pool = await asyncpg.create_pool(
                dsn,
                statement_cache_size=statement_cache_size,
                min_size=1 if eager else 0,
                max_size=pool_size,
                command_timeout=15,
                timeout=_CONNECT_TIMEOUT,
                reset=_keep_session,
                connect=_connect_to_each(hosts, _CONNECT_TIMEOUT) if len(hosts) > 1 else None,
            )
    except asyncpg.InvalidCatalogNameError as exc:
        raise ConfigError(f"the database does not exist: {exc}") from exc
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise ConfigError(f"the database refused the login: {exc}") from exc
    except ValueError as exc:  # asyncpg's verdict on a malformed DSN
        raise ConfigError(f"the database URL is invalid: {exc}") from exc
    try:
        yield pool
    finally:
        with contextlib.suppress(*_UNREACHABLE, asyncpg.InterfaceError):
            await asyncio.wait_for(pool.close(), timeout=5)


class Pooled:
    """What every part of the store shares: the pool (and a way to ask if it answers)."""

    _pool: asyncpg.Pool

    async def ping(self) -> None:
        async with reachable():
            await self._pool.fetchval("SELECT 1")

    def pool_stats(self) -> tuple[int, int, int]:
        """(connections open, connections idle, maximum) of the pool, for metrics."""
        return self._pool.get_size(), self._pool.get_idle_size(), self._pool.get_max_size()
