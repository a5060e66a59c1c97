"""The store the bridge holds: its database parts put together, and the lifecycle statements.

:class:`Store` is one object over one pool, made of the parts in ``bridge/db/`` (schema,
models, devices, activations, tokens, audit), so callers hold one store whatever part
they use. It does not import asyncpg: ``bridge/db/`` does, and translates the driver's
"unreachable" into :class:`bridge.errors.Unavailable` there, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from bridge.db.activations import ActivationBatcher, Activations, activation_senders
from bridge.db.audit import AUDIT_INSERT as _AUDIT_INSERT
from bridge.db.audit import Audit
from bridge.db.audit import audit_args as _audit_args
from bridge.db.devices import Devices
from bridge.db.models import Models
from bridge.db.pool import Pool, open_pool
from bridge.db.pool import reachable as _reachable
from bridge.db.schema import Schema, definitions, migrations, schemas_dir
from bridge.db.tokens import Tokens
from bridge.records import (
    AuditEntry,
    AuditTally,
    ClaimOutcome,
    LifecycleOutcome,
    ModelRow,
    UnapproveOutcome,
)

__all__ = ["Store", "definitions", "migrations", "schemas_dir"]

#: Bulk statements scale with the file, not with a request: they get this long
#: instead of the pool's per-statement timeout.
_BULK_TIMEOUT = 3600.0
_IMPORT_LOCK = 0x6272_6964  # with a model id: bulk imports into one model take turns


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


class Store(Schema, Models, Devices, Activations, Tokens, Audit):
    """A connection pool and the statements the bridge runs on it.

    The parts are mixed in rather than held as attributes so that every caller keeps
    calling ``store.method(...)`` as before: the split moved code, not call sites.
    """

    def __init__(self, pool: Pool, *, tally: AuditTally | None = None) -> None:
        self._pool = pool
        self._tally = tally or AuditTally()
        self._batcher = ActivationBatcher(pool, senders=activation_senders(pool), tally=self._tally)

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
        async with open_pool(dsn, pool_size=pool_size, eager=eager) as pool:
            yield cls(pool, tally=tally)

    # -- vendor and owner side --------------------------------------------------

    async def approve(
        self,
        model: ModelRow,
        identifiers: Sequence[tuple[str, str]],
        actor: str,
        reason: str | None = None,
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
                            detail=_with_reason(None, reason),
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
        self,
        model: ModelRow,
        identifier: str,
        *,
        owner: str,
        actor: str,
        reason: str | None = None,
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
                detail=_with_reason(None if status == "ok" else _holder(row), reason),
            )
        return _lifecycle(status, row)

    async def transfer(
        self, model: ModelRow, identifier: str, *, to: str, actor: str, reason: str | None = None
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
                detail=_with_reason(
                    f"from {row['owner']}" if row and row["owner"] else None, reason
                ),
            )
        return _lifecycle(status, row, window_ends_at)

    async def reenable(
        self,
        model: ModelRow,
        identifier: str,
        *,
        window_seconds: int,
        actor: str,
        by: str,
        reason: str | None = None,
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
                detail=_with_reason(
                    f"was {row['state']}, window {window_seconds}s" if row else None, reason
                ),
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


def _with_reason(detail: str | None, reason: str | None) -> str | None:
    # A reason given by whoever acted (support, on a person's behalf) is kept in the
    # entry's detail, last, so the previous owner's history can show it.
    if reason is None:
        return detail
    return f"{detail}; reason: {reason}" if detail else f"reason: {reason}"


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
