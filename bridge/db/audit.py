"""The audit log: how a row is written, and how entries are found."""

from __future__ import annotations

from typing import Any

from bridge.db.pool import Pooled, reachable
from bridge.records import AuditEntry, AuditQuery, AuditRecord

#: One audit row (device failures go through the tally instead: db/activations.py).
AUDIT_INSERT = """
INSERT INTO audit_log (action, code, actor, client_id, request_id, vendor, model,
                       identifier_presented, identifier, detail, owner)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"""


def audit_args(entry: AuditEntry) -> tuple[Any, ...]:
    """The arguments of :data:`AUDIT_INSERT` (and of bridge_tally after its settings)."""
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


class Audit(Pooled):
    """Reading the audit log."""

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
        async with reachable():
            rows = await self._pool.fetch(sql, *args)
        return [AuditRecord(**dict(r)) for r in rows]
