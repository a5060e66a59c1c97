"""Every SQL statement of the bridge, and the only module that imports asyncpg.

Driver errors that mean "the database cannot be reached now" are translated
here, once, into :class:`bridge.errors.Unavailable`; anything else from the
driver is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from bridge.errors import ConfigError, Unavailable
from bridge.records import (
    ActivationOutcome,
    ApiToken,
    AuditEntry,
    AuditQuery,
    AuditRecord,
    AuditTally,
    ClaimOutcome,
    DeviceRow,
    EnrollmentKeyInfo,
    LifecycleOutcome,
    ModelRow,
    RateLimit,
    Refusal,
    StoredKey,
    UnapproveOutcome,
)

#: Bulk statements scale with the file, not with a request: they get this long
#: instead of the pool's per-statement timeout.
_BULK_TIMEOUT = 3600.0
_IMPORT_LOCK = 0x6272_6964  # with a model id: bulk imports into one model take turns
_MIGRATION_LOCK = 0x6272_6964_6765  # "bridge": one advisory lock id for migrations
_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")
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


@contextlib.asynccontextmanager
async def _reachable() -> AsyncIterator[None]:
    try:
        yield
    except _UNREACHABLE as exc:
        raise Unavailable("The database cannot be reached right now.") from exc
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


def schemas_dir() -> Path:
    """The SQL of the bridge: the repository's ``schemas/``, or the copy inside a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schemas", here / "_data" / "schemas"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("the SQL migrations (schemas/) are missing from this installation")


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration in ``schemas/migrations``, in order.

    Migrations change tables and data, once each; their version is what a deployed
    database records, so a file is never renamed or renumbered once released.
    """
    found = []
    for path in sorted((schemas_dir() / "migrations").iterdir()):
        match = _MIGRATION_NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path.name, path.read_text()))
    return found


def definitions() -> list[tuple[str, str, str]]:
    """(name, SHA-256, SQL) of every file under ``schemas/functions``, in path order.

    These are the current definitions of the database's functions and triggers: each
    file can be applied any number of times (CREATE OR REPLACE, DROP ... IF EXISTS),
    and ``migrate`` applies again every file whose text changed since it last ran, after
    the migrations. A reader finds today's behaviour here, not in the history.
    """
    root = schemas_dir() / "functions"
    found = []
    for path in sorted(root.rglob("*.sql")):
        sql = path.read_text()
        name = path.relative_to(root).as_posix()
        found.append((name, hashlib.sha256(sql.encode()).hexdigest(), sql))
    return found


# Insert a batch from the staging table and audit each identifier added, in one
# statement. Sorted, so that rows are locked in one order.
# A bulk import's batch: first what this import has not given before ("fresh";
# the temporary table approve_seen remembers, so duplicates cost the database's
# disk rather than the importer's memory), then of those what is new to the
# model. Each step goes through a unique index (ON CONFLICT), never a join the
# planner could turn quadratic on tables that grow inside the transaction.
_BULK_INSERT = """
WITH fresh AS (
    INSERT INTO approve_seen (identifier, lookalike)
    SELECT DISTINCT ON (identifier) identifier, lookalike
      FROM approve_staging ORDER BY identifier
    ON CONFLICT DO NOTHING
    RETURNING identifier, lookalike),
added AS (
    INSERT INTO devices (model_id, identifier, lookalike, window_ends_at)
    SELECT $1, f.identifier, f.lookalike,
           CASE WHEN $2::integer IS NULL THEN NULL
                ELSE now() + make_interval(secs => $2::integer) END
      FROM fresh f
     ORDER BY f.identifier
    ON CONFLICT (model_id, identifier) DO NOTHING
    RETURNING identifier),
audited AS (
    INSERT INTO audit_log (action, code, actor, vendor, model, identifier, detail)
    SELECT 'approve', 'ok', $3, $4, $5, a.identifier, $6 FROM added a)
SELECT (SELECT count(*) FROM fresh) AS fresh, (SELECT count(*) FROM added) AS added
"""

# A dry run writes nothing to devices: of the fresh values, those the model
# does not have yet would be added (one index probe each).
_BULK_DRY_RUN = """
WITH fresh AS (
    INSERT INTO approve_seen (identifier, lookalike)
    SELECT DISTINCT ON (identifier) identifier, lookalike
      FROM approve_staging ORDER BY identifier
    ON CONFLICT DO NOTHING
    RETURNING identifier)
SELECT (SELECT count(*) FROM fresh) AS fresh,
       (SELECT count(*) FROM fresh f
         WHERE NOT EXISTS (SELECT FROM devices d
                            WHERE d.model_id = $1 AND d.identifier = f.identifier)) AS added
"""

# A model with the enrollment keys in use (newest first): what activation needs.
_GET_MODEL = """
SELECT m.id, m.vendor, m.model, m.kind, m.pattern, m.window_seconds, m.claim_required,
       m.plaintext_keys, m.proof_required,
       ARRAY(SELECT e.generation FROM enrollment_keys e
              WHERE e.model_id = m.id AND e.retired_at IS NULL
              ORDER BY e.generation DESC) AS generations,
       ARRAY(SELECT e.encrypted_key FROM enrollment_keys e
              WHERE e.model_id = m.id AND e.retired_at IS NULL
              ORDER BY e.generation DESC) AS encrypted_keys
  FROM models m WHERE m.vendor = $1 AND m.model = $2
"""

_AUDIT_INSERT = """
INSERT INTO audit_log (action, code, actor, client_id, request_id, vendor, model,
                       identifier_presented, identifier, detail, owner)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"""


def _audit_args(entry: AuditEntry) -> tuple[Any, ...]:
    return (
        entry.action,
        entry.code,
        entry.actor,
        entry.client_id,
        entry.request_id,
        entry.vendor,
        entry.model,
        entry.identifier_presented,
        entry.identifier,
        entry.detail,
        entry.owner,
    )


class Store:
    """A connection pool and the statements the bridge runs on it."""

    def __init__(self, pool: asyncpg.Pool, *, tally: AuditTally | None = None) -> None:
        self._pool = pool
        self._tally = tally or AuditTally()
        senders = min(_ACTIVATION_SENDERS, pool.get_max_size())
        self._batcher = _ActivationBatcher(pool, senders=senders)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        dsn: str,
        *,
        pool_size: int = 10,
        eager: bool = True,
        tally: AuditTally | None = None,
    ) -> AsyncIterator[Store]:
        """A store on a new pool. ``eager=False`` starts even while the database is down."""
        try:
            dsn, statement_cache_size = _pooler_options(dsn)
            hosts = _one_dsn_per_host(dsn)
            async with _reachable():
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
            yield cls(pool, tally=tally)
        finally:
            with contextlib.suppress(*_UNREACHABLE, asyncpg.InterfaceError):
                await asyncio.wait_for(pool.close(), timeout=5)

    # -- schema -----------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply missing migrations; safe to run twice and from two processes at once."""
        applied: list[str] = []
        async with _reachable(), self._pool.acquire() as conn:
            # Transaction-level advisory locks serialise concurrent migrators (the second
            # one then finds everything applied). Not a session-level lock: behind a
            # pooler in transaction mode the unlock may reach another server connection
            # than the lock did, and the lock would stay held there.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                           version integer PRIMARY KEY,
                           name text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS schema_definitions (
                           name text PRIMARY KEY,
                           sha256 text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
            for version, name, sql in migrations():
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    done = await conn.fetchval(
                        "SELECT true FROM schema_migrations WHERE version = $1", version
                    )
                    if done:
                        continue
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                applied.append(name)
            # All definitions in one transaction: a bridge never sees half of them.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                current = {
                    r["name"]: r["sha256"]
                    for r in await conn.fetch("SELECT name, sha256 FROM schema_definitions")
                }
                for name, digest, sql in definitions():
                    if current.get(name) == digest:
                        continue
                    await conn.execute(sql)
                    await conn.execute(
                        """INSERT INTO schema_definitions (name, sha256) VALUES ($1, $2)
                           ON CONFLICT (name) DO UPDATE
                              SET sha256 = EXCLUDED.sha256, applied_at = now()""",
                        name,
                        digest,
                    )
                    applied.append(f"functions/{name}")
        return applied

    async def pending_migrations(self) -> list[str]:
        """Migrations not applied yet, and definitions whose text changed since applied."""
        async with _reachable(), self._pool.acquire() as conn:
            exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            done = (
                {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                if exists
                else set()
            )
            defined = await conn.fetchval("SELECT to_regclass('schema_definitions') IS NOT NULL")
            current = (
                {
                    r["name"]: r["sha256"]
                    for r in await conn.fetch("SELECT name, sha256 FROM schema_definitions")
                }
                if defined
                else {}
            )
        pending = [name for version, name, _ in migrations() if version not in done]
        pending += [
            f"functions/{name}" for name, digest, _ in definitions() if current.get(name) != digest
        ]
        return pending

    async def ping(self) -> None:
        async with _reachable():
            await self._pool.fetchval("SELECT 1")

    def pool_stats(self) -> tuple[int, int, int]:
        """(connections open, connections idle, maximum) of the pool, for metrics."""
        return self._pool.get_size(), self._pool.get_idle_size(), self._pool.get_max_size()

    # -- models -----------------------------------------------------------------

    async def add_model(
        self,
        *,
        vendor: str,
        model: str,
        kind: str,
        pattern: str | None,
        window_seconds: int,
        claim_required: bool,
        actor: str,
        plaintext_keys: bool = False,
    ) -> ModelRow | None:
        """The new model, or None when (vendor, model) exists already."""
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO models (vendor, model, kind, pattern, window_seconds,
                                       claim_required, plaintext_keys)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (vendor, model) DO NOTHING
                   RETURNING id, vendor, model, kind, pattern, window_seconds, claim_required,
                             plaintext_keys, proof_required""",
                vendor,
                model,
                kind,
                pattern,
                window_seconds,
                claim_required,
                plaintext_keys,
            )
            if row is not None:
                detail = (
                    f"kind={kind} window={window_seconds}s "
                    f"claim={'required' if claim_required else 'not needed'} "
                    f"keys={'plaintext allowed' if plaintext_keys else 'sealed only'}"
                )
                entry = AuditEntry(
                    "model_add", "ok", actor=actor, vendor=vendor, model=model, detail=detail
                )
                await conn.execute(_AUDIT_INSERT, *_audit_args(entry))
        return ModelRow(**dict(row)) if row is not None else None

    async def get_model(self, vendor: str, model: str) -> ModelRow | None:
        async with _reachable():
            row = await self._pool.fetchrow(_GET_MODEL, vendor, model)
        if row is None:
            return None
        fields = dict(row)
        enrollment_keys = tuple(
            zip(fields.pop("generations"), fields.pop("encrypted_keys"), strict=True)
        )
        return ModelRow(**fields, enrollment_keys=enrollment_keys)

    # -- enrollment keys (device proof) ------------------------------------------

    async def add_enrollment_key(
        self,
        model: ModelRow,
        encrypt: Callable[[int], bytes],
        *,
        rotate: bool,
        retire_previous: bool,
        actor: str,
    ) -> tuple[str, int]:
        """Add the model's next enrollment key generation, encrypted by ``encrypt(generation)``.

        Returns ("ok", the new generation), or the refusal with the newest generation:
        "has_key" (a first key asked for a model that has one) or "no_key" (a rotation
        of a model without one). The first key turns the model's proof requirement on;
        ``retire_previous`` retires every older generation at once.
        """
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            # The model row lock makes concurrent rotations of one model take turns.
            await conn.execute("SELECT 1 FROM models WHERE id = $1 FOR UPDATE", model.id)
            newest: int = await conn.fetchval(
                "SELECT coalesce(max(generation), 0) FROM enrollment_keys WHERE model_id = $1",
                model.id,
            )
            if newest and not rotate:
                return "has_key", newest
            if not newest and rotate:
                return "no_key", newest
            generation = newest + 1
            await conn.execute(
                """INSERT INTO enrollment_keys (model_id, generation, encrypted_key)
                   VALUES ($1, $2, $3)""",
                model.id,
                generation,
                encrypt(generation),
            )
            retired = "none retired"
            if retire_previous:
                status = await conn.execute(
                    """UPDATE enrollment_keys SET retired_at = now()
                        WHERE model_id = $1 AND generation < $2 AND retired_at IS NULL""",
                    model.id,
                    generation,
                )
                retired = f"{status.split()[-1]} previous retired"
            await conn.execute("UPDATE models SET proof_required = true WHERE id = $1", model.id)
            entry = AuditEntry(
                "enrollment_key_rotate" if rotate else "enrollment_key_create",
                "ok",
                actor=actor,
                vendor=model.vendor,
                model=model.model,
                detail=f"generation {generation}; {retired}",
            )
            await conn.execute(_AUDIT_INSERT, *_audit_args(entry))
        return "ok", generation

    async def retire_enrollment_key(self, model: ModelRow, generation: int, *, actor: str) -> str:
        """Retire one generation: "ok", "not_found", "already_retired" or "newest".

        The newest generation is the one device secrets are printed from; it is
        replaced by a rotation, never retired alone.
        """
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM models WHERE id = $1 FOR UPDATE", model.id)
            row = await conn.fetchrow(
                """SELECT retired_at, generation = (SELECT max(generation) FROM enrollment_keys
                                                     WHERE model_id = $1) AS newest
                     FROM enrollment_keys WHERE model_id = $1 AND generation = $2""",
                model.id,
                generation,
            )
            if row is None:
                return "not_found"
            if row["retired_at"] is not None:
                return "already_retired"
            if row["newest"]:
                return "newest"
            await conn.execute(
                """UPDATE enrollment_keys SET retired_at = now()
                    WHERE model_id = $1 AND generation = $2""",
                model.id,
                generation,
            )
            entry = AuditEntry(
                "enrollment_key_retire",
                "ok",
                actor=actor,
                vendor=model.vendor,
                model=model.model,
                detail=f"generation {generation}",
            )
            await conn.execute(_AUDIT_INSERT, *_audit_args(entry))
        return "ok"

    async def enrollment_key_list(self, model: ModelRow) -> list[EnrollmentKeyInfo]:
        """Every generation of the model's enrollment key, newest first (never a key)."""
        async with _reachable():
            rows = await self._pool.fetch(
                """SELECT generation, created_at, retired_at FROM enrollment_keys
                    WHERE model_id = $1 ORDER BY generation DESC""",
                model.id,
            )
        return [EnrollmentKeyInfo(**dict(r)) for r in rows]

    async def patterned_models(self) -> list[ModelRow]:
        """Every model that has a serial pattern, in name order."""
        async with _reachable():
            rows = await self._pool.fetch(
                """SELECT id, vendor, model, kind, pattern, window_seconds, claim_required
                   FROM models WHERE pattern IS NOT NULL ORDER BY vendor, model"""
            )
        return [ModelRow(**dict(row)) for row in rows]

    # -- activation -------------------------------------------------------------

    async def activate(
        self,
        *,
        client_id: str,
        request_id: str,
        model_id: int,
        identifier: str,
        presented: str,
        key_id: str,
        key_hash: bytes,
        reply: bytes,
        grace_seconds: int,
        limit: RateLimit,
        device_logins: bool = False,
    ) -> ActivationOutcome:
        """Decide one activation, throttled (bridge_activate_throttled), batched under load.

        With ``device_logins`` (devices get broker logins named by their client id), a
        client id that is another device's login is refused (``client_id_reserved``).
        Alone, this is one round trip. When every sender is busy, the activations that
        wait are sent together (:class:`_ActivationBatcher`).
        """
        args = (
            client_id,
            request_id,
            model_id,
            identifier,
            presented,
            key_id,
            key_hash,
            reply,
            grace_seconds,
            limit.failures,
            limit.identifier_failures,
            limit.model_failures,
            limit.window_seconds,
            self._tally.window_seconds,
            self._tally.clients,
            device_logins,
        )
        return await self._batcher.submit(args)

    async def refuse(self, entry: AuditEntry, limit: RateLimit) -> Refusal:
        """Count a refusal decided before the database and audit it, in one round trip.

        It counts against the client id, and against the model and the identifier when
        the entry names them. ``retry_after`` is set when the answer becomes
        ``rate_limited`` instead (``limited_by`` says which limit).
        """
        async with _reachable():
            row = await self._pool.fetchrow(
                "SELECT * FROM bridge_refuse_throttled($1, $2, $3, $4, $5, $6, $7, $8, $9,"
                " $10, $11, $12, $13, $14, $15, $16)",
                limit.failures,
                limit.identifier_failures,
                limit.model_failures,
                limit.window_seconds,
                self._tally.window_seconds,
                self._tally.clients,
                # Every audit column but owner: a refusal decided before the database
                # names no device, so it has no owner to record.
                *_audit_args(entry)[:-1],
            )
        assert row is not None  # the function always returns one row
        return Refusal(row["retry_after"], row["limited_by"])

    async def record(self, entry: AuditEntry) -> None:
        """Audit an outcome decided before the database (not counted by the throttle).

        A device's failure is tallied (one row per client id, code and window, with a
        count: schemas/008), so anonymous input cannot grow the log without bound;
        anything else is one row.
        """
        async with _reachable():
            if entry.actor == "device" and entry.action == "activate" and entry.code != "ok":
                await self._pool.execute(
                    "SELECT bridge_tally($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    self._tally.window_seconds,
                    self._tally.clients,
                    *_audit_args(entry)[:-1],
                )
            else:
                await self._pool.execute(_AUDIT_INSERT, *_audit_args(entry))

    async def purge_replies(self) -> int:
        """Forget replies past their grace period; returns how many."""
        async with _reachable():
            status = await self._pool.execute("DELETE FROM replies WHERE expires_at <= now()")
        return int(status.split()[-1])

    async def purge_attempts(self, window_seconds: int) -> int:
        """Forget attempt counters whose window has closed; returns how many.

        Tally budgets (scope ``tally``) run over the audit tally's window instead.
        """
        async with _reachable():
            status = await self._pool.execute(
                "DELETE FROM attempt_counters WHERE window_start + make_interval(secs => "
                "CASE WHEN scope = 'tally' THEN $2::integer ELSE $1::integer END) <= now()",
                window_seconds,
                self._tally.window_seconds,
            )
        return int(status.split()[-1])

    # -- vendor and owner side --------------------------------------------------

    async def approve(
        self,
        model: ModelRow,
        identifiers: Sequence[tuple[str, str]],
        actor: str,
    ) -> tuple[int, int]:
        """Approve (canonical, lookalike) pairs; returns (added, already approved)."""
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            # For models without a claim step, approval opens the activation window.
            window = None if model.claim_required else model.window_seconds
            added = await conn.fetch(
                """INSERT INTO devices (model_id, identifier, lookalike, window_ends_at)
                   SELECT $1, i.identifier, i.lookalike,
                          CASE WHEN $4::integer IS NULL THEN NULL
                               ELSE now() + make_interval(secs => $4::integer) END
                     FROM unnest($2::text[], $3::text[]) AS i (identifier, lookalike)
                   ON CONFLICT (model_id, identifier) DO NOTHING
                   RETURNING identifier""",
                model.id,
                [c for c, _ in identifiers],
                [k for _, k in identifiers],
                window,
            )
            await conn.executemany(
                _AUDIT_INSERT,
                [
                    _audit_args(
                        AuditEntry(
                            "approve",
                            "ok",
                            actor=actor,
                            vendor=model.vendor,
                            model=model.model,
                            identifier=r["identifier"],
                        )
                    )
                    for r in added
                ],
            )
        unique = len({c for c, _ in identifiers})
        return len(added), unique - len(added)

    async def claim(
        self, model: ModelRow, identifier: str, *, owner: str, actor: str
    ) -> ClaimOutcome:
        """Claim in one transaction; the row lock makes one of two racing owners win."""
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await _lock_device(conn, model.id, identifier)
            if row is None:
                status, window_ends_at = "not_approved", None
            elif row["owner"] is not None:
                status = "already_yours" if row["owner"] == owner else "claimed_by_other"
                window_ends_at = row["window_ends_at"]
            else:
                owner_id = await conn.fetchval(
                    """INSERT INTO owners (name) VALUES ($1)
                       ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
                       RETURNING id""",
                    owner,
                )
                window_ends_at = await conn.fetchval(
                    """UPDATE devices
                          SET owner_id = $2,
                              state = CASE WHEN state = 'approved' THEN 'claimed' ELSE state END,
                              window_ends_at = CASE WHEN state = 'approved'
                                  THEN now() + make_interval(secs => $3) ELSE window_ends_at END,
                              updated_at = now()
                        WHERE id = $1
                    RETURNING window_ends_at""",
                    row["id"],
                    owner_id,
                    model.window_seconds,
                )
                await conn.execute(
                    "INSERT INTO claims (device_id, owner_id) VALUES ($1, $2)", row["id"], owner_id
                )
                status = "ok"
            await conn.execute(
                _AUDIT_INSERT,
                *_audit_args(
                    AuditEntry(
                        "claim",
                        status if status != "already_yours" else "ok",
                        actor=actor,
                        vendor=model.vendor,
                        model=model.model,
                        identifier=identifier,
                        owner=owner,
                        detail=f"owner={owner}"
                        + (" (already theirs)" if status == "already_yours" else ""),
                    )
                ),
            )
        return ClaimOutcome(status, window_ends_at)

    async def stored_key(self, model: ModelRow, identifier: str) -> StoredKey | None:
        """The keyed hash of a device's current key (None when it has none)."""
        async with _reachable():
            row = await self._pool.fetchrow(
                """SELECT state, key_id, key_hash FROM devices
                    WHERE model_id = $1 AND identifier = $2 AND key_hash IS NOT NULL""",
                model.id,
                identifier,
            )
        return StoredKey(**dict(row)) if row is not None else None

    async def login_of(self, model: ModelRow, identifier: str) -> str | None:
        """The client id whose broker login holds the device's key (None: never activated)."""
        async with _reachable():
            client_id: str | None = await self._pool.fetchval(
                "SELECT client_id FROM devices WHERE model_id = $1 AND identifier = $2",
                model.id,
                identifier,
            )
        return client_id

    async def lookalikes(self, model: ModelRow, key: str, limit: int = 5) -> list[str]:
        """Approved identifiers whose folded form equals ``key`` (an index probe)."""
        async with _reachable():
            rows = await self._pool.fetch(
                "SELECT identifier FROM devices WHERE model_id = $1 AND lookalike = $2 LIMIT $3",
                model.id,
                key,
                limit,
            )
        return [r["identifier"] for r in rows]

    async def show(self, model: ModelRow, identifier: str) -> DeviceRow | None:
        async with _reachable():
            row = await self._pool.fetchrow(
                """SELECT $3::text AS vendor, $4::text AS model, d.identifier, d.state,
                          o.name AS owner, d.window_ends_at, d.activated_at, d.approved_at,
                          d.key_id
                     FROM devices d LEFT JOIN owners o ON o.id = d.owner_id
                    WHERE d.model_id = $1 AND d.identifier = $2""",
                model.id,
                identifier,
                model.vendor,
                model.model,
            )
        return DeviceRow(**dict(row)) if row is not None else None

    async def owner_devices(self, owner: str, *, limit: int = 500) -> list[tuple[DeviceRow, str]]:
        """(device, model kind) of the devices ``owner`` holds, by vendor, model, identifier."""
        async with _reachable():
            rows = await self._pool.fetch(
                """SELECT m.vendor, m.model, d.identifier, d.state, o.name AS owner,
                          d.window_ends_at, d.activated_at, d.approved_at, d.key_id, m.kind
                     FROM owners o
                     JOIN devices d ON d.owner_id = o.id
                     JOIN models m ON m.id = d.model_id
                    WHERE o.name = $1
                    ORDER BY m.vendor, m.model, d.identifier
                    LIMIT $2""",
                owner,
                limit,
            )
        return [(DeviceRow(**{k: v for k, v in r.items() if k != "kind"}), r["kind"]) for r in rows]

    # -- HTTP API tokens and the claim throttle ---------------------------------

    async def add_token(
        self, *, token_id: str, role: str, subject: str | None, token_hash: bytes, actor: str
    ) -> ApiToken:
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO api_tokens (id, role, subject, token_hash) VALUES ($1, $2, $3, $4)
                   RETURNING id, role, subject, created_at, revoked_at""",
                token_id,
                role,
                subject,
                token_hash,
            )
            entry = AuditEntry(
                "token_create",
                "ok",
                actor=actor,
                detail=f"id={token_id} role={role}" + (f" subject={subject}" if subject else ""),
            )
            await conn.execute(_AUDIT_INSERT, *_audit_args(entry))
        assert row is not None
        return ApiToken(**dict(row))

    async def revoke_token(self, token_id: str, *, actor: str) -> ApiToken | None:
        """The revoked token (revoking twice keeps the first time), or None if unknown."""
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
                    WHERE id = $1
                RETURNING id, role, subject, created_at, revoked_at""",
                token_id,
            )
            if row is not None:
                entry = AuditEntry("token_revoke", "ok", actor=actor, detail=f"id={token_id}")
                await conn.execute(_AUDIT_INSERT, *_audit_args(entry))
        return ApiToken(**dict(row)) if row is not None else None

    async def token_by_hash(self, token_hash: bytes) -> ApiToken | None:
        async with _reachable():
            row = await self._pool.fetchrow(
                """SELECT id, role, subject, created_at, revoked_at
                     FROM api_tokens WHERE token_hash = $1""",
                token_hash,
            )
        return ApiToken(**dict(row)) if row is not None else None

    async def tokens(self) -> list[ApiToken]:
        async with _reachable():
            rows = await self._pool.fetch(
                """SELECT id, role, subject, created_at, revoked_at
                     FROM api_tokens ORDER BY created_at"""
            )
        return [ApiToken(**dict(r)) for r in rows]

    async def take_claim_attempt(self, token_id: str, *, limit: int, window_seconds: int) -> int:
        """Count one claim attempt against the token; 0 if allowed, else seconds to wait.

        The attempt is counted before the claim runs (and given back when it
        succeeds), so concurrent requests from many processes never exceed
        ``limit`` failures in one window.
        """
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            counted = await conn.fetchval(
                """INSERT INTO api_claim_throttle AS t (token_id, window_start, failures)
                   VALUES ($1, now(), 1)
                   ON CONFLICT (token_id) DO UPDATE
                      SET window_start = CASE WHEN t.window_start
                                + make_interval(secs => $3) <= now()
                              THEN now() ELSE t.window_start END,
                          failures = CASE WHEN t.window_start
                                + make_interval(secs => $3) <= now()
                              THEN 1 ELSE t.failures + 1 END
                    WHERE t.window_start + make_interval(secs => $3) <= now()
                       OR t.failures < $2
                RETURNING failures""",
                token_id,
                limit,
                window_seconds,
            )
            if counted is not None:
                return 0
            wait: int = await conn.fetchval(
                """SELECT greatest(1, ceil(extract(epoch FROM
                              window_start + make_interval(secs => $2) - now())))::integer
                     FROM api_claim_throttle WHERE token_id = $1""",
                token_id,
                window_seconds,
            )
        return wait

    async def give_back_claim_attempt(self, token_id: str) -> None:
        """Uncount an attempt that did not fail (only failures are throttled)."""
        async with _reachable():
            await self._pool.execute(
                """UPDATE api_claim_throttle SET failures = greatest(failures - 1, 0)
                    WHERE token_id = $1""",
                token_id,
            )

    # -- lifecycle --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def bulk_approver(
        self, model: ModelRow, *, actor: str, detail: str | None = None, dry_run: bool = False
    ) -> AsyncIterator[Callable[[Sequence[tuple[str, str]]], Awaitable[tuple[int, int, int]]]]:
        """One transaction for a bulk import; yields ``load(pairs) -> (added, already, dups)``.

        Each call streams (canonical, lookalike) pairs into a temporary table with
        COPY, then inserts and audits them with one statement: a handful of round
        trips per batch whatever its size. A pair given before in this import (in
        this batch or an earlier one) is counted in ``dups`` and not again; the
        values seen are kept in a temporary table, so the caller holds only the
        batch in memory however large the import. The transaction
        commits when the block ends (rolls back on an error, or for ``dry_run``,
        which only counts). Imports into one model take turns (an advisory lock),
        so two overlapping files cannot deadlock on each other's rows.
        """
        window = None if model.claim_required else model.window_seconds
        async with _reachable(), self._pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, ($2 % 2147483647)::integer)",
                    _IMPORT_LOCK,
                    model.id,
                )
                await conn.execute(
                    """CREATE TEMPORARY TABLE approve_staging
                           (identifier text NOT NULL, lookalike text NOT NULL) ON COMMIT DROP"""
                )
                await conn.execute(
                    """CREATE TEMPORARY TABLE approve_seen
                           (identifier text PRIMARY KEY, lookalike text NOT NULL) ON COMMIT DROP"""
                )

                async def load(pairs: Sequence[tuple[str, str]]) -> tuple[int, int, int]:
                    await conn.copy_records_to_table(
                        "approve_staging",
                        records=pairs,
                        columns=("identifier", "lookalike"),
                        timeout=_BULK_TIMEOUT,
                    )
                    if dry_run:
                        counts = await conn.fetchrow(_BULK_DRY_RUN, model.id, timeout=_BULK_TIMEOUT)
                    else:
                        counts = await conn.fetchrow(
                            _BULK_INSERT,
                            model.id,
                            window,
                            actor,
                            model.vendor,
                            model.model,
                            detail,
                            timeout=_BULK_TIMEOUT,
                        )
                    assert counts is not None
                    await conn.execute("TRUNCATE approve_staging")
                    fresh: int = counts["fresh"]
                    added: int = counts["added"]
                    return added, fresh - added, len(pairs) - fresh

                yield load
            except BaseException:
                await tx.rollback()
                raise
            if dry_run:
                await tx.rollback()
            else:
                await tx.commit()

    async def unapprove(
        self, model: ModelRow, identifiers: Sequence[str], *, force: bool, actor: str
    ) -> UnapproveOutcome:
        """Remove identifiers; devices in use are left alone (all of them) unless ``force``."""
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            locked = await conn.fetch(
                """SELECT id, identifier, state, owner_id, client_id FROM devices
                    WHERE model_id = $1 AND identifier = ANY($2::text[])
                    ORDER BY identifier
                    FOR UPDATE""",
                model.id,
                list(identifiers),
            )
            # Names are read after the lock, in a statement of their own (see _lock_device).
            names = {
                r["id"]: r["name"]
                for r in await conn.fetch(
                    "SELECT id, name FROM owners WHERE id = ANY($1::bigint[])",
                    [r["owner_id"] for r in locked if r["owner_id"] is not None],
                )
            }
            rows = [{**dict(r), "owner": names.get(r["owner_id"])} for r in locked]
            found = {r["identifier"] for r in rows}
            missing = [i for i in dict.fromkeys(identifiers) if i not in found]
            in_use = [
                (r["identifier"], r["owner"], r["state"])
                for r in rows
                if r["owner"] is not None or r["state"] != "approved"
            ]
            refused = bool(in_use) and not force
            if not refused:
                await conn.execute(
                    "DELETE FROM devices WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
                )
            entries = [
                AuditEntry(
                    "unapprove",
                    "conflict" if refused and (r["owner"] or r["state"] != "approved") else "ok",
                    actor=actor,
                    vendor=model.vendor,
                    model=model.model,
                    identifier=r["identifier"],
                    owner=r["owner"],
                    detail=f"was {r['state']}" + (" (forced)" if force else ""),
                )
                for r in rows
                if not refused or r["owner"] is not None or r["state"] != "approved"
            ]
            await conn.executemany(_AUDIT_INSERT, [_audit_args(e) for e in entries])
        removed = [] if refused else [r["identifier"] for r in rows]
        logins = [] if refused else [r["client_id"] for r in rows if r["client_id"]]
        return UnapproveOutcome(removed, missing, in_use, logins)

    async def release(
        self, model: ModelRow, identifier: str, *, owner: str, actor: str
    ) -> LifecycleOutcome:
        """The owner gives the device up: claim closed, key and stored replies gone.

        A device its vendor revoked stays revoked: releasing and claiming it again
        must not undo the vendor's decision.
        """
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await _lock_device(conn, model.id, identifier)
            if row is None:
                status = "not_approved"
            elif row["owner"] is None:
                status = "not_claimed"
            elif row["owner"] != owner:
                status = "not_owner"
            else:
                status = "ok"
                await _close_claim(conn, row["id"], actor)
                # A model without a claim step goes back to what approval gave it:
                # an open window; the others wait for the next owner's claim.
                await conn.execute(
                    """UPDATE devices
                          SET owner_id = NULL, key_id = NULL, key_hash = NULL,
                              activated_at = NULL, updated_at = now(),
                              state = CASE WHEN $3 THEN 'revoked' ELSE 'approved' END,
                              revoked_by = CASE WHEN $3 THEN revoked_by END,
                              window_ends_at = CASE WHEN $3 OR $2::integer IS NULL THEN NULL
                                  ELSE now() + make_interval(secs => $2::integer) END
                        WHERE id = $1""",
                    row["id"],
                    None if model.claim_required else model.window_seconds,
                    _vendor_revoked(row),
                )
                await conn.execute("DELETE FROM replies WHERE device_id = $1", row["id"])
            await _audit(
                conn,
                model,
                "release",
                status,
                identifier,
                actor=actor,
                owner=owner,
                detail=None if status == "ok" else _holder(row),
            )
        return _lifecycle(status, row)

    async def transfer(
        self, model: ModelRow, identifier: str, *, to: str, actor: str
    ) -> LifecycleOutcome:
        """Move a claimed device to another owner (the chain of ownership gets a new link).

        The previous owner's key is revoked with it (the key is the device's identity,
        and the previous owner may hold a copy): the new owner's activation window
        opens, and the device activates again for a new key. A revoked device stays
        revoked.
        """
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await _lock_device(conn, model.id, identifier)
            window_ends_at = None
            if row is None:
                status = "not_approved"
            elif row["owner"] is None:
                status = "not_claimed"
            elif row["owner"] == to:
                status = "already_theirs"
            else:
                status = "ok"
                await _close_claim(conn, row["id"], actor)
                owner_id = await _owner_id(conn, to)
                window_ends_at = await conn.fetchval(
                    """UPDATE devices
                          SET owner_id = $2, key_id = NULL, key_hash = NULL,
                              activated_at = NULL, updated_at = now(),
                              state = CASE WHEN state = 'revoked' THEN 'revoked' ELSE 'claimed' END,
                              window_ends_at = CASE WHEN state = 'revoked' THEN NULL
                                  ELSE now() + make_interval(secs => $3) END
                        WHERE id = $1
                    RETURNING window_ends_at""",
                    row["id"],
                    owner_id,
                    model.window_seconds,
                )
                await conn.execute(
                    "INSERT INTO claims (device_id, owner_id) VALUES ($1, $2)", row["id"], owner_id
                )
                await conn.execute("DELETE FROM replies WHERE device_id = $1", row["id"])
            await _audit(
                conn,
                model,
                "transfer",
                _audit_code(status),
                identifier,
                actor=actor,
                owner=to,
                detail=f"from {row['owner']}" if row and row["owner"] else None,
            )
        return _lifecycle(status, row, window_ends_at)

    async def reenable(
        self, model: ModelRow, identifier: str, *, window_seconds: int, actor: str, by: str
    ) -> LifecycleOutcome:
        """Open a new activation window; the next activation replaces the key.

        ``by`` is who asks (owner, vendor or admin): an owner cannot undo a revoke that
        was not an owner's (``revoked_by_vendor``).
        """
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await _lock_device(conn, model.id, identifier)
            window_ends_at = None
            if row is None:
                status = "not_approved"
            elif row["owner"] is None and model.claim_required:
                status = "not_claimed"
            elif by == "owner" and _vendor_revoked(row):
                status = "revoked_by_vendor"
            else:
                status = "ok"
                # The key hash stays until the next activation overwrites it: the
                # old key stops being valid at that moment, not before.
                window_ends_at = await conn.fetchval(
                    """UPDATE devices
                          SET state = $2, updated_at = now(), revoked_by = NULL,
                              window_ends_at = now() + make_interval(secs => $3)
                        WHERE id = $1
                    RETURNING window_ends_at""",
                    row["id"],
                    "approved" if row["owner"] is None else "claimed",
                    window_seconds,
                )
                # A stored reply would hand the old key to an old request id.
                await conn.execute("DELETE FROM replies WHERE device_id = $1", row["id"])
            await _audit(
                conn,
                model,
                "reenable",
                "forbidden" if status == "revoked_by_vendor" else status,
                identifier,
                actor=actor,
                owner=row["owner"] if row else None,
                detail=f"was {row['state']}, window {window_seconds}s" if row else None,
            )
        return _lifecycle(status, row, window_ends_at)

    async def revoke(
        self, model: ModelRow, identifier: str, *, actor: str, by: str
    ) -> LifecycleOutcome:
        """The key stops being valid now; activation answers revoked until re-enabled.

        ``by`` (owner, vendor or admin) is kept: only a vendor or an administrator
        undoes a revoke that was not an owner's.
        """
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await _lock_device(conn, model.id, identifier)
            if row is None:
                status = "not_approved"
            elif row["state"] == "revoked":
                status = "already_revoked"
            elif row["owner"] is None and model.claim_required:
                status = "not_claimed"
            else:
                status = "ok"
                await conn.execute(
                    """UPDATE devices
                          SET state = 'revoked', key_id = NULL, key_hash = NULL,
                              window_ends_at = NULL, updated_at = now(), revoked_by = $2
                        WHERE id = $1""",
                    row["id"],
                    by,
                )
                await conn.execute("DELETE FROM replies WHERE device_id = $1", row["id"])
            await _audit(
                conn,
                model,
                "revoke",
                _audit_code(status),
                identifier,
                actor=actor,
                owner=row["owner"] if row else None,
                detail=f"was {row['state']}, by {by}" if row else None,
            )
        return _lifecycle(status, row)

    # -- reading ----------------------------------------------------------------

    async def list_devices(
        self,
        model: ModelRow,
        *,
        state: str | None = None,
        owner: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[DeviceRow]:
        """One page of a model's devices in identifier order (keyset paging on ``after``)."""
        where = ["d.model_id = $1"]
        args: list[Any] = [model.id, model.vendor, model.model]
        for clause, value in (
            ("d.state = ${}", state),
            ("d.owner_id = (SELECT id FROM owners WHERE name = ${})", owner),
            ("d.identifier > ${}", after),
        ):
            if value is not None:
                args.append(value)
                where.append(clause.format(len(args)))
        args.append(limit)
        sql = f"""SELECT $2::text AS vendor, $3::text AS model, d.identifier, d.state,
                         o.name AS owner, d.window_ends_at, d.activated_at, d.approved_at,
                         d.key_id
                    FROM devices d LEFT JOIN owners o ON o.id = d.owner_id
                   WHERE {" AND ".join(where)}
                   ORDER BY d.identifier
                   LIMIT ${len(args)}"""
        async with _reachable():
            rows = await self._pool.fetch(sql, *args)
        return [DeviceRow(**dict(r)) for r in rows]

    async def audit(self, query: AuditQuery) -> list[AuditRecord]:
        """Audit entries matching every given filter, newest first."""
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("vendor = ${}", query.vendor),
            ("model = ${}", query.model),
            (
                "identifier = ANY(${}::text[])",
                list(query.identifiers) if query.identifiers else None,
            ),
            ("owner = ${}", query.owner),
            ("client_id = ${}", query.client_id),
            ("code = ${}", query.code),
            ("at >= ${}", query.since),
        ):
            if value is not None:
                args.append(value)
                where.append(clause.format(len(args)))
        if query.code is not None and query.code != "ok":
            where.append("code <> 'ok'")  # lets the planner prove the partial index applies
        args.append(query.limit)
        sql = f"""SELECT id, at, action, code, actor, client_id, request_id, vendor, model,
                         identifier_presented, identifier, owner, detail,
                         1 + repeats AS count, last_at
                    FROM audit_log
                   {"WHERE " + " AND ".join(where) if where else ""}
                   ORDER BY at DESC, id DESC
                   LIMIT ${len(args)}"""
        async with _reachable():
            rows = await self._pool.fetch(sql, *args)
        return [AuditRecord(**dict(r)) for r in rows]


async def _lock_device(conn: Any, model_id: int, identifier: str) -> dict[str, Any] | None:
    """Lock one device row; its fields plus ``owner``, the owner's name (or None)."""
    row = await conn.fetchrow(
        """SELECT id, state, owner_id, window_ends_at, client_id, revoked_by FROM devices
            WHERE model_id = $1 AND identifier = $2
              FOR UPDATE""",
        model_id,
        identifier,
    )
    if row is None:
        return None
    found = dict(row)
    # The name is read in a statement of its own, after the lock. Under READ
    # COMMITTED a join in the locking statement would use the snapshot taken
    # before waiting for the lock, and miss an owner row inserted by the
    # transaction we waited for: the device would look unclaimed.
    found["owner"] = (
        await conn.fetchval("SELECT name FROM owners WHERE id = $1", row["owner_id"])
        if row["owner_id"] is not None
        else None
    )
    return found


def _vendor_revoked(row: dict[str, Any]) -> bool:
    # A revoke recorded before 010 (revoked_by NULL) came from a vendor or the CLI.
    return bool(row["state"] == "revoked" and row["revoked_by"] != "owner")


def _lifecycle(
    status: str, row: dict[str, Any] | None, window_ends_at: datetime | None = None
) -> LifecycleOutcome:
    if row is None:
        return LifecycleOutcome(status)
    # ``login``: the broker login that held the key (read under the row lock, so a
    # concurrent activation cannot slip a new one past the caller that closes it).
    return LifecycleOutcome(
        status, row["owner"], row["state"], window_ends_at, login=row["client_id"]
    )


def _audit_code(status: str) -> str:
    # The audit log speaks protocol codes; "already so" refusals are conflicts.
    return "conflict" if status.startswith("already_") else status


def _holder(row: Any) -> str | None:
    if row is None:
        return None
    return f"held by {row['owner']}" if row["owner"] else "not claimed"


async def _close_claim(conn: Any, device_id: int, actor: str) -> None:
    await conn.execute(
        """UPDATE claims SET released_at = now(), released_by = $2
            WHERE device_id = $1 AND released_at IS NULL""",
        device_id,
        actor,
    )


async def _owner_id(conn: Any, name: str) -> int:
    owner_id: int = await conn.fetchval(
        """INSERT INTO owners (name) VALUES ($1)
           ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
           RETURNING id""",
        name,
    )
    return owner_id


async def _audit(
    conn: Any,
    model: ModelRow,
    action: str,
    code: str,
    identifier: str,
    *,
    actor: str,
    owner: str | None,
    detail: str | None,
) -> None:
    entry = AuditEntry(
        action,
        code,
        actor=actor,
        vendor=model.vendor,
        model=model.model,
        identifier=identifier,
        owner=owner,
        detail=detail,
    )
    await conn.execute(_AUDIT_INSERT, *_audit_args(entry))


#: The bridge's activation statement (bench/dbceiling.py runs it as it is).
ACTIVATE_STATEMENT = (
    "SELECT * FROM bridge_activate_throttled"
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
)
# Several activations in one statement: one round trip and one commit for all of them.
# Rows are passed sorted by device, so two batches lock devices in the same order and
# cannot deadlock; a device twice in one batch is decided twice in order, exactly as
# two requests one after the other (the second sees the first's key).
_ACTIVATE_MANY = """
SELECT r.n, a.code, a.replay, a.window_ends_at, a.retry_after, a.replaced_client_id,
       a.limited_by
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
              $7::bytea[], $8::bytea[], $9::integer[], $10::integer[], $11::integer[],
              $12::integer[], $13::integer[], $14::integer[], $15::integer[],
              $16::boolean[])
       WITH ORDINALITY AS r(client_id, request_id, model_id, identifier, presented,
                            key_id, key_hash, reply, grace, lim, id_lim, model_lim, win,
                            tally_win, tally_clients, logins, n)
 CROSS JOIN LATERAL bridge_activate_throttled(r.client_id, r.request_id, r.model_id,
                                              r.identifier, r.presented, r.key_id,
                                              r.key_hash, r.reply, r.grace, r.lim, r.id_lim,
                                              r.model_lim, r.win, r.tally_win,
                                              r.tally_clients, r.logins) AS a
 ORDER BY r.n
"""
_BATCH_MAX = 32
_DEADLOCK_RETRIES = 3
# Activation statements in flight at once. Few senders mean fuller batches: on the 2-core
# bench machine, 2 senders against 10 cut CPU per activation from 0.44 to 0.36 ms in
# PostgreSQL and from 0.55 to 0.37 ms in the bridge, at the same p99 under light load
# (docs/performance.md).
# A batch needs one round trip whatever its size, so this does not cap throughput on
# a larger database server either.
_ACTIVATION_SENDERS = 2

_ActivationArgs = tuple[
    str, str, int, str, str, str, bytes, bytes, int, int, int, int, int, int, int, bool
]


class _ActivationBatcher:
    """Coalesces concurrent activations into one statement when the pool is busy.

    At most ``senders`` statements are in flight (one per pooled connection). An
    activation that arrives while fewer are in flight is sent at once, alone: light load
    pays no extra latency. Those that arrive while all are busy wait together and leave
    as one batch when a sender is free. Measured on the 2-core bench machine, 8 per batch
    halve PostgreSQL's CPU per activation (docs/performance.md).
    """

    def __init__(self, pool: asyncpg.Pool, *, senders: int) -> None:
        self._pool = pool
        self._senders = senders
        self._active = 0
        self._waiting: list[tuple[_ActivationArgs, asyncio.Future[ActivationOutcome]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, args: _ActivationArgs) -> ActivationOutcome:
        future: asyncio.Future[ActivationOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((args, future))
        if self._active < self._senders:
            self._active += 1
            task = asyncio.create_task(self._send(), name="bridge-activate-batch")
            self._tasks.add(task)  # bounded by `senders`; kept so it is not collected
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:_BATCH_MAX]
                del self._waiting[:_BATCH_MAX]
                # A caller cancelled while waiting (shutdown) no longer wants its activation.
                batch = [(args, future) for args, future in batch if not future.done()]
                if not batch:
                    continue
                try:
                    outcomes = await self._decide([args for args, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:  # Unavailable, or a bug: each caller gets it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():  # its caller may have been cancelled meanwhile
                        future.set_result(outcome)
        finally:
            self._active -= 1

    async def _decide(self, batch: list[_ActivationArgs]) -> list[ActivationOutcome]:
        if len(batch) > 1:
            try:
                return await self._decide_many(batch)
            except asyncpg.DeadlockDetectedError:
                # Each activation locks its client id (an advisory lock) and its device,
                # then, when it fails, the counters of its identifier and model. A batch
                # holds what its first rows locked while its later rows wait, so two
                # batches (or a batch and a single activation) can wait on each other.
                # PostgreSQL then rolls one back whole, so deciding again is safe: one
                # by one, where no batch order is involved.
                pass
        return [await self._decide_alone(args) for args in batch]

    async def _decide_alone(self, args: _ActivationArgs) -> ActivationOutcome:
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                return await self._decide_one(args)
            except asyncpg.DeadlockDetectedError:
                # Alone, it can still meet a batch that holds what it needs.
                await asyncio.sleep(0.01 * (attempt + 1))
        return await self._decide_one(args)

    async def _decide_one(self, args: _ActivationArgs) -> ActivationOutcome:
        async with _reachable():
            row = await self._pool.fetchrow(ACTIVATE_STATEMENT, *args)
        assert row is not None  # the function always returns one row
        return _outcome(row)

    async def _decide_many(self, batch: list[_ActivationArgs]) -> list[ActivationOutcome]:
        # Sorted by client id, then device: batches take counter and row locks in one
        # order as far as they can (see _decide for the rest).
        order = sorted(range(len(batch)), key=lambda i: (batch[i][0], batch[i][2], batch[i][3]))
        columns = [[batch[i][c] for i in order] for c in range(len(batch[0]))]
        async with _reachable():
            rows = await self._pool.fetch(_ACTIVATE_MANY, *columns)
        outcomes: list[ActivationOutcome | None] = [None] * len(batch)
        for row in rows:
            outcomes[order[row["n"] - 1]] = _outcome(row)
        assert all(o is not None for o in outcomes)  # one row per activation
        return outcomes  # type: ignore[return-value]


def _outcome(row: Any) -> ActivationOutcome:
    return ActivationOutcome(
        row["code"],
        row["replay"],
        row["window_ends_at"],
        row["retry_after"],
        row["replaced_client_id"],
        row["limited_by"],
    )
