"""The device lifecycle transitions the database decides: one statement each.

Each transition is a function in ``schemas/functions/transitions/`` (one file each):
it locks the device, decides, changes the rows and writes the audit row, in one round
trip and one transaction. This module only calls it and turns its row into the
records of :mod:`bridge.records`; :mod:`bridge.transitions` is the use case around it
(refusal sentences, the broker login closed after commit).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from bridge.db.pool import Pooled, reachable
from bridge.errors import Unavailable
from bridge.records import ClaimOutcome, LifecycleOutcome, ModelRow, UnapproveOutcome

#: Bulk statements scale with the file, not with a request: they get this long
#: instead of the pool's per-statement timeout.
_BULK_TIMEOUT = 3600.0

#: ``load(pairs) -> (added, already, duplicates)``: one batch of a bulk approval.
BulkLoad = Callable[[Sequence[tuple[str, str]]], Awaitable[tuple[int, int, int]]]


class Transitions(Pooled):
    """The transitions of a device's lifecycle (a part of :class:`bridge.store.Store`)."""

    async def approve(
        self,
        model: ModelRow,
        pairs: Sequence[tuple[str, str]],
        *,
        actor: str,
        reason: str | None = None,
    ) -> tuple[int, int]:
        """Approve (canonical, lookalike) pairs; returns (added, already approved).

        An import into the model in progress is waited for, for a while
        (schemas/functions/transitions/approve.sql); then :class:`Unavailable`.
        """
        try:
            row = await self._one(
                "SELECT * FROM bridge_approve($1, $2, $3, $4, $5)",
                model.id,
                [canonical for canonical, _ in pairs],
                [lookalike for _, lookalike in pairs],
                actor,
                reason,
            )
        except asyncpg.LockNotAvailableError as exc:
            raise _importing() from exc
        return row["added"], row["already"]

    @contextlib.asynccontextmanager
    async def bulk_approver(
        self,
        model: ModelRow,
        *,
        actor: str,
        detail: str | None = None,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> AsyncIterator[BulkLoad]:
        """One transaction for a bulk import; yields ``load(pairs) -> (added, already, dups)``.

        Each call streams (canonical, lookalike) pairs into the import's staging table
        with COPY, then approves and audits them with one statement: two round trips
        per batch whatever its size. A pair given before in this import is counted in
        ``dups`` and not again, so the caller holds only the batch in memory however
        large the import. The transaction commits when the block ends (rolls back on an
        error, or for ``dry_run``, which only counts).
        """
        async with reachable(), self._pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                try:
                    await conn.execute("SELECT bridge_bulk_approve_begin($1)", model.id)
                except asyncpg.LockNotAvailableError as exc:  # another import, 5 s on
                    raise _importing() from exc

                async def load(pairs: Sequence[tuple[str, str]]) -> tuple[int, int, int]:
                    await conn.copy_records_to_table(
                        "approve_staging",
                        records=pairs,
                        columns=("identifier", "lookalike"),
                        timeout=_BULK_TIMEOUT,
                    )
                    counts = await conn.fetchrow(
                        "SELECT * FROM bridge_bulk_approve($1, $2, $3, $4, $5)",
                        model.id,
                        actor,
                        detail,
                        reason,
                        dry_run,
                        timeout=_BULK_TIMEOUT,
                    )
                    assert counts is not None  # the function returns one row
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

    async def claim(
        self, model: ModelRow, identifier: str, *, owner: str, actor: str, reason: str | None = None
    ) -> ClaimOutcome:
        """Claim for ``owner``; the row lock makes one of two racing owners win."""
        row = await self._one(
            "SELECT * FROM bridge_claim($1, $2, $3, $4, $5)",
            model.id,
            identifier,
            owner,
            actor,
            reason,
        )
        return ClaimOutcome(row["status"], row["window_ends_at"])

    async def unapprove(
        self,
        model: ModelRow,
        identifiers: Sequence[str],
        *,
        force: bool,
        actor: str,
        reason: str | None = None,
    ) -> UnapproveOutcome:
        """Remove identifiers; devices in use are left alone (all of them) unless ``force``.

        It waits for devices busy in another transaction (an activation), for a while
        (schemas/functions/transitions/unapprove.sql); then :class:`Unavailable`.
        """
        try:
            async with reachable():
                rows = await self._pool.fetch(
                    "SELECT * FROM bridge_unapprove($1, $2, $3, $4, $5)",
                    model.id,
                    list(identifiers),
                    force,
                    actor,
                    reason,
                )
        except asyncpg.LockNotAvailableError as exc:
            raise Unavailable(
                "Some of these devices stayed busy (being activated or changed) for seconds; "
                "nothing was unapproved, try again.",
                retry_after=5,
            ) from exc
        listed = [r for r in rows if r["listed"]]
        return UnapproveOutcome(
            removed=[r["identifier"] for r in listed if r["removed"]],
            missing=[r["identifier"] for r in rows if not r["listed"]],
            in_use=[(r["identifier"], r["owner"], r["state"]) for r in listed if r["in_use"]],
            logins=[r["login"] for r in listed if r["login"]],
        )

    async def release(
        self, model: ModelRow, identifier: str, *, owner: str, actor: str, reason: str | None = None
    ) -> LifecycleOutcome:
        """The owner gives the device up: claim closed, key and stored replies gone."""
        return _lifecycle(
            await self._one(
                "SELECT * FROM bridge_release($1, $2, $3, $4, $5)",
                model.id,
                identifier,
                owner,
                actor,
                reason,
            )
        )

    async def transfer(
        self,
        model: ModelRow,
        identifier: str,
        *,
        to: str,
        actor: str,
        reason: str | None = None,
        holder: str | None = None,
    ) -> LifecycleOutcome:
        """Move a claimed device to ``to``; the previous owner's key is revoked with it.
        With ``holder``, only if the device is still that owner's (else not_owner)."""
        return _lifecycle(
            await self._one(
                "SELECT * FROM bridge_transfer($1, $2, $3, $4, $5, $6)",
                model.id,
                identifier,
                to,
                actor,
                reason,
                holder,
            )
        )

    async def reenable(
        self,
        model: ModelRow,
        identifier: str,
        *,
        window_seconds: int,
        by: str,
        actor: str,
        reason: str | None = None,
    ) -> LifecycleOutcome:
        """Open a new activation window; ``by`` (owner, vendor, admin) is who asks."""
        return _lifecycle(
            await self._one(
                "SELECT * FROM bridge_reenable($1, $2, $3, $4, $5, $6)",
                model.id,
                identifier,
                window_seconds,
                by,
                actor,
                reason,
            )
        )

    async def revoke(
        self, model: ModelRow, identifier: str, *, by: str, actor: str, reason: str | None = None
    ) -> LifecycleOutcome:
        """The key stops being valid now; ``by`` (owner, vendor, admin) is kept."""
        return _lifecycle(
            await self._one(
                "SELECT * FROM bridge_revoke($1, $2, $3, $4, $5)",
                model.id,
                identifier,
                by,
                actor,
                reason,
            )
        )

    async def _one(self, sql: str, *args: Any) -> asyncpg.Record:
        async with reachable():
            row = await self._pool.fetchrow(sql, *args)
        assert row is not None  # every transition function returns one row
        return row


def _lifecycle(row: asyncpg.Record) -> LifecycleOutcome:
    # ``login``: the broker login that held the key, read under the row lock, so a
    # concurrent activation cannot slip a new one past the caller that closes it.
    return LifecycleOutcome(
        row["status"], row["owner"], row["state"], row["window_ends_at"], login=row["login"]
    )


def _importing() -> Unavailable:
    """An approval or an import that waited its turn behind an import for too long."""
    return Unavailable(
        "An approval file is being imported into this model; try again when the "
        "import has finished.",
        retry_after=5,
    )
