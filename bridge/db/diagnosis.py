"""The statements behind a diagnosis: what the bridge knows about one number.

Each read is a probe or a short range scan on an index (docs/support.md has the plans
at 1,000,000 approved numbers and 10,000,000 audit rows): the device row, its audit
timeline, approved numbers near it, other models of the vendor that approved it, and
activation attempts of the model in a claim's window that carried another number.
The verdict itself is decided in :mod:`bridge.diagnosis`, without I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from bridge.db.audit import AUDIT_INSERT, audit_args
from bridge.db.pool import reachable
from bridge.diagnosis import Device, Event, Neighbour
from bridge.records import AuditEntry, ModelRow
from bridge.store import Store

#: A number's lifecycle entries a diagnosis reads, newest first: approvals, claims,
#: releases, transfers, re-enables, revokes, support's actions, successful activations.
#: Each is an account's, the vendor's or an administrator's doing (or a device's key),
#: so device attempts, however many, never push one out of the timeline.
LIFECYCLE_LIMIT: Final = 500
#: A number's device attempts a diagnosis reads, newest first (tallied rows).
ATTEMPT_LIMIT: Final = 100
#: Older attempt rows counted for the line that says how many are not shown: past
#: this many it says "at least", so a flood costs a diagnosis a bounded read.
OLDER_COUNTED: Final = 1_000
#: Approved numbers read on either side of one that is not approved.
RANGE_READ: Final = 256
#: Unreadable attempts of a model read per claim window (newest first).
UNREADABLE_LIMIT: Final = 100
#: A tallied failure row opens at its first attempt and counts repeats for up to the
#: tally window (AuditTally, one hour by default): rows opened that long before a
#: claim may still hold attempts made after it.
TALLY_SLACK: Final = timedelta(hours=1)

_EVENT_COLUMNS = """at, action, code, actor, owner, client_id, identifier_presented AS presented,
       identifier, detail, 1 + repeats AS count, last_at"""


# The statements, by name (bench/diagnose.py explains each of them).
DEVICE = """SELECT d.id, d.state, o.name AS owner, d.approved_at, d.window_ends_at,
                      d.activated_at, d.client_id,
                      (SELECT c.claimed_at FROM claims c
                        WHERE c.device_id = d.id AND c.released_at IS NULL) AS claimed_at
                 FROM devices d LEFT JOIN owners o ON o.id = d.owner_id
                WHERE d.model_id = $1 AND d.identifier = $2"""

EVER_CLAIMED = """SELECT EXISTS (
                   SELECT 1 FROM devices d
                     JOIN claims c ON c.device_id = d.id
                     JOIN owners o ON o.id = c.owner_id
                    WHERE d.model_id = $1 AND d.identifier = $2 AND o.name = $3)"""

# A number's audit rows in two parts that together are all of them: its lifecycle
# (everything but device attempts; a successful activation is one, a tallied row, a
# failure or a replay, is not) and its device attempts. The first is word for word the
# predicate of the index audit_log_lifecycle (migration 014).
_LIFECYCLE = "(action <> 'activate' OR (code = 'ok' AND last_at IS NULL))"
_ATTEMPT = "action = 'activate' AND (code <> 'ok' OR last_at IS NOT NULL)"

# Two bounded reads in one statement: the lifecycle through audit_log_lifecycle, the
# newest attempts through audit_log_identifier.
TIMELINE = f"""(SELECT {_EVENT_COLUMNS}, true AS lifecycle FROM audit_log
                  WHERE identifier = $1 AND vendor = $2 AND model = $3 AND {_LIFECYCLE}
                  ORDER BY at DESC, id DESC LIMIT $4)
               UNION ALL
               (SELECT {_EVENT_COLUMNS}, false FROM audit_log
                  WHERE identifier = $1 AND vendor = $2 AND model = $3 AND {_ATTEMPT}
                  ORDER BY at DESC, id DESC LIMIT $5)"""

# The attempts past the newest $4, counted up to $5 rows (read only when the timeline
# holds $4 of them).
OLDER_ATTEMPTS = f"""SELECT count(*) AS entries, coalesce(sum(1 + repeats), 0) AS attempts,
                            max(at) AS newest
                 FROM (SELECT at, repeats FROM audit_log
                        WHERE identifier = $1 AND vendor = $2 AND model = $3 AND {_ATTEMPT}
                        ORDER BY at DESC, id DESC OFFSET $4 LIMIT $5) older"""

APPROVED_AMONG = """
WITH found AS (
    SELECT id FROM devices WHERE model_id = $1 AND identifier = ANY($2::text[])
    UNION
    (SELECT id FROM devices WHERE model_id = $1 AND lookalike = $3 LIMIT 20))
SELECT d.identifier, d.state, o.name AS owner, d.lookalike = $3 AS by_lookalike
  FROM found f JOIN devices d ON d.id = f.id LEFT JOIN owners o ON o.id = d.owner_id
 LIMIT 20"""

BELOW = """SELECT identifier FROM devices WHERE model_id = $1 AND identifier < $2
                ORDER BY identifier DESC LIMIT $3"""

ABOVE = """SELECT identifier FROM devices WHERE model_id = $1 AND identifier > $2
                ORDER BY identifier LIMIT $3"""

VENDOR_MODELS = """SELECT id, vendor, model, kind, pattern, window_seconds, claim_required
                 FROM models WHERE vendor = $1 AND id <> $2 ORDER BY model"""

APPROVED_ELSEWHERE = """SELECT m.model, d.state
                 FROM unnest($1::bigint[], $2::text[]) AS c (model_id, identifier)
                 JOIN devices d ON d.model_id = c.model_id AND d.identifier = c.identifier
                 JOIN models m ON m.id = d.model_id
                ORDER BY m.model"""

NEAR_ATTEMPTS = f"""SELECT {_EVENT_COLUMNS} FROM audit_log
                 WHERE identifier = ANY($1::text[]) AND vendor = $2 AND model = $3
                   AND action = 'activate' AND at >= $4 AND at < $5
                   AND coalesce(last_at, at) >= $6
                 ORDER BY at LIMIT 50"""

UNREADABLE_ATTEMPTS = f"""SELECT {_EVENT_COLUMNS} FROM audit_log
                 WHERE vendor = $1 AND model = $2
                   AND action = 'activate' AND identifier IS NULL
                   AND at >= $3 AND at < $4 AND coalesce(last_at, at) >= $5
                 ORDER BY at DESC LIMIT $6"""


OWNER_HISTORY = f"""SELECT {_EVENT_COLUMNS}, a.vendor, a.model, m.kind
                  FROM audit_log a
                  LEFT JOIN models m ON m.vendor = a.vendor AND m.model = a.model
                 WHERE a.owner = $1 AND a.code = 'ok'
                   AND a.action IN ('claim', 'release', 'transfer', 'reenable', 'revoke')
                   -- Implied by the list; said so the planner proves that the index
                   -- audit_log_owner_lifecycle (migration 014) applies: it holds no
                   -- device attempt, however many carry the owner's name.
                   AND a.action <> 'activate'
                 ORDER BY a.at DESC, a.id DESC LIMIT $2"""


def _pool(store: Store) -> Any:
    # The store's pool: these statements belong beside the store's own, which keep
    # the pool private to the database package.
    return store._pool  # noqa: SLF001 the store's parts share its pool; this is one more part


def _event(row: Any) -> Event:
    return Event(**dict(row))


async def device(store: Store, model: ModelRow, identifier: str) -> tuple[int, Device] | None:
    """(device id, the number's row now, with its open claim's start) or None."""
    async with reachable():
        row = await _pool(store).fetchrow(
            DEVICE,
            model.id,
            identifier,
        )
    if row is None:
        return None
    fields = dict(row)
    return fields.pop("id"), Device(**fields)


async def ever_claimed_by(store: Store, model: ModelRow, identifier: str, owner: str) -> bool:
    """Whether ``owner`` holds or ever held a claim on the number."""
    async with reachable():
        found: bool = await _pool(store).fetchval(
            EVER_CLAIMED,
            model.id,
            identifier,
            owner,
        )
    return found


async def timeline(store: Store, model: ModelRow, identifier: str) -> list[Event]:
    """The number's audit entries, oldest first: every lifecycle entry (approval, claims,
    releases, ..., the activation) and its newest device attempts; when older attempts
    are not shown, a line (action ``older_attempts``) in their place says how many."""
    args = (identifier, model.vendor, model.model)
    async with reachable(), _pool(store).acquire() as conn:
        rows = await conn.fetch(TIMELINE, *args, LIFECYCLE_LIMIT, ATTEMPT_LIMIT)
        shown = sum(1 for r in rows if not r["lifecycle"])
        older = (
            await conn.fetchrow(OLDER_ATTEMPTS, *args, ATTEMPT_LIMIT, OLDER_COUNTED)
            if shown == ATTEMPT_LIMIT
            else None
        )
    events = [Event(**{k: v for k, v in r.items() if k != "lifecycle"}) for r in rows]
    if older is not None and older["entries"]:
        events.append(_older_attempts(older["entries"], older["attempts"], older["newest"]))
    return sorted(events, key=lambda e: e.at)


def _older_attempts(entries: int, attempts: int, newest: datetime) -> Event:
    # A line of the timeline, not an audit entry: no owner, so an owner's view (built
    # from their own entries) leaves it out; what it counts may predate their claim.
    more = "at least " if entries >= OLDER_COUNTED else ""
    return Event(
        at=newest,
        action="older_attempts",
        code="not_shown",
        count=attempts,
        detail=(
            f"{more}{entries:,} older entries of device attempts ({more}{attempts:,} "
            f"attempts) are not shown: the timeline keeps every lifecycle entry and the "
            f"newest {ATTEMPT_LIMIT} entries of attempts"
        ),
    )


async def approved_among(
    store: Store, model: ModelRow, candidates: dict[str, str], lookalike: str
) -> list[Neighbour]:
    """Approved numbers among ``candidates`` ({canonical: how}) or sharing ``lookalike``."""
    async with reachable():
        rows = await _pool(store).fetch(
            APPROVED_AMONG,
            model.id,
            list(candidates),
            lookalike,
        )
    # Two index probes, not one ordered scan: ORDER BY ... LIMIT would let the planner
    # walk the model's whole approval list in identifier order, filtering.
    rows = sorted(rows, key=lambda r: r["identifier"])
    return [
        Neighbour(
            r["identifier"],
            "look-alike" if r["by_lookalike"] else candidates[r["identifier"]],
            r["owner"],
            r["state"],
        )
        for r in rows
    ]


async def around(store: Store, model: ModelRow, identifier: str) -> tuple[list[str], list[str]]:
    """Approved numbers just under and just over ``identifier``, nearest first."""
    async with reachable(), _pool(store).acquire() as conn:
        below = await conn.fetch(
            BELOW,
            model.id,
            identifier,
            RANGE_READ,
        )
        above = await conn.fetch(
            ABOVE,
            model.id,
            identifier,
            RANGE_READ,
        )
    return [r["identifier"] for r in below], [r["identifier"] for r in above]


async def vendor_models(store: Store, model: ModelRow) -> list[ModelRow]:
    """The vendor's other models."""
    async with reachable():
        rows = await _pool(store).fetch(
            VENDOR_MODELS,
            model.vendor,
            model.id,
        )
    return [ModelRow(**dict(r)) for r in rows]


async def approved_elsewhere(
    store: Store, pairs: Sequence[tuple[int, str]]
) -> list[tuple[str, str]]:
    """(model, state) for each (model id, canonical) pair on an approval list."""
    if not pairs:
        return []
    async with reachable():
        rows = await _pool(store).fetch(
            APPROVED_ELSEWHERE,
            [p[0] for p in pairs],
            [p[1] for p in pairs],
        )
    return [(r["model"], r["state"]) for r in rows]


async def window_attempts(
    store: Store,
    model: ModelRow,
    candidates: Sequence[str],
    start: datetime,
    end: datetime,
) -> list[Event]:
    """Attempts of the model between ``start`` and ``end`` that carried one of
    ``candidates`` (near misses of the claimed number) or no readable number at all."""
    since = start - TALLY_SLACK
    async with reachable(), _pool(store).acquire() as conn:
        near = await conn.fetch(
            NEAR_ATTEMPTS,
            list(candidates),
            model.vendor,
            model.model,
            since,
            end,
            start,
        )
        unreadable = await conn.fetch(
            UNREADABLE_ATTEMPTS,
            model.vendor,
            model.model,
            since,
            end,
            start,
            UNREADABLE_LIMIT,
        )
    return sorted((_event(r) for r in (*near, *unreadable)), key=lambda e: e.at)


async def support_contact(store: Store, model: ModelRow) -> str | None:
    async with reachable():
        contact: str | None = await _pool(store).fetchval(
            "SELECT support_contact FROM models WHERE id = $1", model.id
        )
    return contact


async def set_support_contact(
    store: Store, model: ModelRow, contact: str | None, *, actor: str
) -> None:
    """Set (or clear, with None) the model's support contact; audited."""
    async with reachable(), _pool(store).acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE models SET support_contact = $2 WHERE id = $1", model.id, contact
        )
        entry = AuditEntry(
            "model_contact",
            "ok",
            actor=actor,
            vendor=model.vendor,
            model=model.model,
            detail=f"support contact {contact!r}" if contact else "support contact cleared",
        )
        await conn.execute(AUDIT_INSERT, *audit_args(entry))


async def owner_history(
    store: Store, owner: str, limit: int = 50
) -> list[tuple[Event, str, str, str | None]]:
    """(entry, vendor, model, the model's kind) of the claims, releases, transfers,
    re-enables and revokes concerning ``owner``, newest first."""
    async with reachable():
        rows = await _pool(store).fetch(
            OWNER_HISTORY,
            owner,
            limit,
        )
    out = []
    for r in rows:
        fields = {k: v for k, v in dict(r).items() if k not in ("vendor", "model", "kind")}
        out.append((Event(**fields), r["vendor"], r["model"], r["kind"]))
    return out
