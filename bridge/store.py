"""Every SQL statement of the bridge, and the only module that imports asyncpg.

Driver errors that mean "the database cannot be reached now" are translated
here, once, into :class:`bridge.errors.Unavailable`; anything else from the
driver is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from bridge.errors import ConfigError, Unavailable
from bridge.records import ActivationOutcome, AuditEntry, ClaimOutcome, DeviceRow, ModelRow

_MIGRATION_LOCK = 0x6272_6964_6765  # "bridge": one advisory lock id for migrations
_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")

_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)


@contextlib.asynccontextmanager
async def _reachable() -> AsyncIterator[None]:
    try:
        yield
    except _UNREACHABLE as exc:
        raise Unavailable("The database cannot be reached right now.") from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool without asyncpg's default reset query.

    That query (unlock advisory locks, CLOSE ALL, UNLISTEN, RESET ALL) is a second round
    trip on every release, doubling the database work of an activation. No statement
    here leaves session state behind: no SET, LISTEN or cursor, and migrate() releases
    its advisory lock itself. An open transaction is still rolled back by the pool.
    """


def schemas_dir() -> Path:
    """The numbered SQL migrations: the repository's, or the copy inside a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schemas", here / "_data" / "schemas"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("the SQL migrations (schemas/) are missing from this installation")


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration, in order."""
    found = []
    for path in sorted(schemas_dir().iterdir()):
        match = _MIGRATION_NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path.name, path.read_text()))
    return found


_AUDIT_INSERT = """
INSERT INTO audit_log (action, code, actor, client_id, request_id, vendor, model,
                       identifier_presented, identifier, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
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
    )


class Store:
    """A connection pool and the statements the bridge runs on it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        senders = min(_ACTIVATION_SENDERS, pool.get_max_size())
        self._batcher = _ActivationBatcher(pool, senders=senders)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, dsn: str, *, pool_size: int = 10, eager: bool = True
    ) -> AsyncIterator[Store]:
        """A store on a new pool. ``eager=False`` starts even while the database is down."""
        try:
            async with _reachable():
                pool = await asyncpg.create_pool(
                    dsn,
                    min_size=1 if eager else 0,
                    max_size=pool_size,
                    command_timeout=15,
                    timeout=10,
                    reset=_keep_session,
                )
        except asyncpg.InvalidCatalogNameError as exc:
            raise ConfigError(f"the database does not exist: {exc}") from exc
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            raise ConfigError(f"the database refused the login: {exc}") from exc
        except ValueError as exc:  # asyncpg's verdict on a malformed DSN
            raise ConfigError(f"the database URL is invalid: {exc}") from exc
        try:
            yield cls(pool)
        finally:
            with contextlib.suppress(*_UNREACHABLE):
                await asyncio.wait_for(pool.close(), timeout=5)

    # -- schema -----------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply missing migrations; safe to run twice and from two processes at once."""
        applied: list[str] = []
        async with _reachable(), self._pool.acquire() as conn:
            # A session-level advisory lock serialises concurrent migrators; the second
            # one then finds everything applied.
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                           version integer PRIMARY KEY,
                           name text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                done = {
                    r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
                }
                for version, name, sql in migrations():
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                            version,
                            name,
                        )
                    applied.append(name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied

    async def pending_migrations(self) -> list[str]:
        async with _reachable(), self._pool.acquire() as conn:
            exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            done = (
                {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                if exists
                else set()
            )
        return [name for version, name, _ in migrations() if version not in done]

    async def ping(self) -> None:
        async with _reachable():
            await self._pool.fetchval("SELECT 1")

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
    ) -> ModelRow | None:
        """The new model, or None when (vendor, model) exists already."""
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO models (vendor, model, kind, pattern, window_seconds, claim_required)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (vendor, model) DO NOTHING
                   RETURNING id, vendor, model, kind, pattern, window_seconds, claim_required""",
                vendor,
                model,
                kind,
                pattern,
                window_seconds,
                claim_required,
            )
            if row is not None:
                detail = (
                    f"kind={kind} window={window_seconds}s "
                    f"claim={'required' if claim_required else 'not needed'}"
                )
                entry = AuditEntry(
                    "model_add", "ok", actor=actor, vendor=vendor, model=model, detail=detail
                )
                await conn.execute(_AUDIT_INSERT, *_audit_args(entry))
        return ModelRow(**dict(row)) if row is not None else None

    async def get_model(self, vendor: str, model: str) -> ModelRow | None:
        async with _reachable():
            row = await self._pool.fetchrow(
                """SELECT id, vendor, model, kind, pattern, window_seconds, claim_required
                   FROM models WHERE vendor = $1 AND model = $2""",
                vendor,
                model,
            )
        return ModelRow(**dict(row)) if row is not None else None

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
    ) -> ActivationOutcome:
        """Decide one activation (see bridge_activate in schemas/), batched under load.

        Alone, this is one round trip. When every connection is busy, waiting
        activations are sent together (:class:`_ActivationBatcher`).
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
        )
        return await self._batcher.submit(args)

    async def record(self, entry: AuditEntry) -> None:
        """Append one audit entry on its own (for outcomes decided before the database)."""
        async with _reachable():
            await self._pool.execute(_AUDIT_INSERT, *_audit_args(entry))

    async def purge_replies(self) -> int:
        """Forget replies past their grace period; returns how many."""
        async with _reachable():
            status = await self._pool.execute("DELETE FROM replies WHERE expires_at <= now()")
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
            row = await conn.fetchrow(
                """SELECT d.id, d.state, o.name AS owner, d.window_ends_at
                     FROM devices d LEFT JOIN owners o ON o.id = d.owner_id
                    WHERE d.model_id = $1 AND d.identifier = $2
                    FOR UPDATE OF d""",
                model.id,
                identifier,
            )
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
                        detail=f"owner={owner}"
                        + (" (already theirs)" if status == "already_yours" else ""),
                    )
                ),
            )
        return ClaimOutcome(status, window_ends_at)

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


_ACTIVATE_ONE = "SELECT * FROM bridge_activate($1, $2, $3, $4, $5, $6, $7, $8, $9)"
# Several activations in one statement: one round trip and one commit for all of them.
# Rows are passed sorted by device, so two batches lock devices in the same order and
# cannot deadlock; a device twice in one batch is decided twice in order, exactly as
# two requests one after the other (the second sees the first's key).
_ACTIVATE_MANY = """
SELECT r.n, a.code, a.replay, a.window_ends_at
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
              $7::bytea[], $8::bytea[], $9::integer[])
       WITH ORDINALITY AS r(client_id, request_id, model_id, identifier, presented,
                            key_id, key_hash, reply, grace, n)
 CROSS JOIN LATERAL bridge_activate(r.client_id, r.request_id, r.model_id, r.identifier,
                                    r.presented, r.key_id, r.key_hash, r.reply, r.grace) AS a
 ORDER BY r.n
"""
_BATCH_MAX = 32
# Activation statements in flight at once. Few senders mean fuller batches: on the 2-core
# bench machine, 2 senders against 10 cut CPU per activation from 0.44 to 0.36 ms in
# PostgreSQL and from 0.55 to 0.37 ms in the bridge, at the same p99 under light load
# (docs/performance.md).
# A batch needs one round trip whatever its size, so this does not cap throughput on
# a larger database server either.
_ACTIVATION_SENDERS = 2

_ActivationArgs = tuple[str, str, int, str, str, str, bytes, bytes, int]


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
        async with _reachable():
            if len(batch) == 1:
                row = await self._pool.fetchrow(_ACTIVATE_ONE, *batch[0])
                assert row is not None  # the function always returns one row
                return [ActivationOutcome(row["code"], row["replay"], row["window_ends_at"])]
            order = sorted(range(len(batch)), key=lambda i: (batch[i][2], batch[i][3]))
            columns = [[batch[i][c] for i in order] for c in range(9)]
            rows = await self._pool.fetch(_ACTIVATE_MANY, *columns)
        outcomes: list[ActivationOutcome | None] = [None] * len(batch)
        for row in rows:
            outcomes[order[row["n"] - 1]] = ActivationOutcome(
                row["code"], row["replay"], row["window_ends_at"]
            )
        assert all(o is not None for o in outcomes)  # one row per activation
        return outcomes  # type: ignore[return-value]
