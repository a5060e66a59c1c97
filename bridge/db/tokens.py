"""Bearer tokens of the HTTP API, and the per-token throttle of failed claims."""

from __future__ import annotations

from bridge.db.audit import AUDIT_INSERT, audit_args
from bridge.db.pool import Pooled, reachable
from bridge.records import ApiToken, AuditEntry


class Tokens(Pooled):
    """Tokens (only their hash is stored) and the claim throttle."""

    async def add_token(
        self, *, token_id: str, role: str, subject: str | None, token_hash: bytes, actor: str
    ) -> ApiToken:
        async with reachable(), self._pool.acquire() as conn, conn.transaction():
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
            await conn.execute(AUDIT_INSERT, *audit_args(entry))
        assert row is not None
        return ApiToken(**dict(row))

    async def revoke_token(self, token_id: str, *, actor: str) -> ApiToken | None:
        """The revoked token (revoking twice keeps the first time), or None if unknown."""
        async with reachable(), self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
                    WHERE id = $1
                RETURNING id, role, subject, created_at, revoked_at""",
                token_id,
            )
            if row is not None:
                entry = AuditEntry("token_revoke", "ok", actor=actor, detail=f"id={token_id}")
                await conn.execute(AUDIT_INSERT, *audit_args(entry))
        return ApiToken(**dict(row)) if row is not None else None

    async def token_by_hash(self, token_hash: bytes) -> ApiToken | None:
        async with reachable():
            row = await self._pool.fetchrow(
                """SELECT id, role, subject, created_at, revoked_at
                     FROM api_tokens WHERE token_hash = $1""",
                token_hash,
            )
        return ApiToken(**dict(row)) if row is not None else None

    async def tokens(self) -> list[ApiToken]:
        async with reachable():
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
        async with reachable(), self._pool.acquire() as conn, conn.transaction():
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
        async with reachable():
            await self._pool.execute(
                """UPDATE api_claim_throttle SET failures = greatest(failures - 1, 0)
                    WHERE token_id = $1""",
                token_id,
            )
