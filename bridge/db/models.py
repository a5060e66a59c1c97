"""Device models and their enrollment keys (device proof)."""

from __future__ import annotations

from collections.abc import Callable

from bridge.db.audit import AUDIT_INSERT, audit_args
from bridge.db.pool import Pooled, reachable
from bridge.records import AuditEntry, EnrollmentKeyInfo, ModelRow

# A model with the enrollment keys in use (newest first): what activation needs.
_GET_MODEL = """
SELECT m.id, m.vendor, m.model, m.kind, m.pattern, m.window_seconds, m.claim_required,
       m.plaintext_keys, m.proof_required, m.support_contact,
       ARRAY(SELECT e.generation FROM enrollment_keys e
              WHERE e.model_id = m.id AND e.retired_at IS NULL
              ORDER BY e.generation DESC) AS generations,
       ARRAY(SELECT e.encrypted_key FROM enrollment_keys e
              WHERE e.model_id = m.id AND e.retired_at IS NULL
              ORDER BY e.generation DESC) AS encrypted_keys
  FROM models m WHERE m.vendor = $1 AND m.model = $2
"""


class Models(Pooled):
    """Registering models, reading them, and their enrollment keys."""

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
        async with reachable(), self._pool.acquire() as conn, conn.transaction():
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
                await conn.execute(AUDIT_INSERT, *audit_args(entry))
        return ModelRow(**dict(row)) if row is not None else None

    async def get_model(self, vendor: str, model: str) -> ModelRow | None:
        async with reachable():
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
        async with reachable(), self._pool.acquire() as conn, conn.transaction():
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
            await conn.execute(AUDIT_INSERT, *audit_args(entry))
        return "ok", generation

    async def retire_enrollment_key(self, model: ModelRow, generation: int, *, actor: str) -> str:
        """Retire one generation: "ok", "not_found", "already_retired" or "newest".

        The newest generation is the one device secrets are printed from; it is
        replaced by a rotation, never retired alone.
        """
        async with reachable(), self._pool.acquire() as conn, conn.transaction():
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
            await conn.execute(AUDIT_INSERT, *audit_args(entry))
        return "ok"

    async def enrollment_key_list(self, model: ModelRow) -> list[EnrollmentKeyInfo]:
        """Every generation of the model's enrollment key, newest first (never a key)."""
        async with reachable():
            rows = await self._pool.fetch(
                """SELECT generation, created_at, retired_at FROM enrollment_keys
                    WHERE model_id = $1 ORDER BY generation DESC""",
                model.id,
            )
        return [EnrollmentKeyInfo(**dict(r)) for r in rows]

    async def patterned_models(self) -> list[ModelRow]:
        """Every model that has a serial pattern, in name order."""
        async with reachable():
            rows = await self._pool.fetch(
                """SELECT id, vendor, model, kind, pattern, window_seconds, claim_required
                   FROM models WHERE pattern IS NOT NULL ORDER BY vendor, model"""
            )
        return [ModelRow(**dict(row)) for row in rows]
