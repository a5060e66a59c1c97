"""The database's layout: migrations (tables and data) and current definitions (functions).

``schemas/migrations/NNN_name.sql`` run once each, in order, and a database records
the versions it has; ``schemas/functions/**/*.sql`` are applied again whenever their
text changes (schemas/README.md).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from bridge.db.pool import Pooled, reachable
from bridge.errors import ConfigError

_MIGRATION_LOCK = 0x6272_6964_6765  # "bridge": one advisory lock id for migrations
_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


def schemas_dir() -> Path:
    """The SQL of the bridge: the repository's ``schemas/``, or the copy inside a wheel."""
    here = Path(__file__).resolve().parent.parent
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


class Schema(Pooled):
    """Bringing a database to this version's layout, and telling what is missing."""

    async def migrate(self) -> list[str]:
        """Apply missing migrations; safe to run twice and from two processes at once."""
        applied: list[str] = []
        async with reachable(), self._pool.acquire() as conn:
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
        async with reachable(), self._pool.acquire() as conn:
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
