"""Activation as the bridge sends it: one statement per activation or per batch.

The decision itself is ``bridge_activate`` (schemas/functions/transitions/activate.sql);
its arguments are a :class:`bridge.records.Activation`, passed by name, so the
statements here are built from the record's fields and never list them. Also here:
refusals decided before the database (counted and tallied like failed activations),
audit entries of device attempts, and the housekeeping of replies and counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import Any

import asyncpg

from bridge.db.audit import AUDIT_INSERT, audit_args
from bridge.db.pool import Pooled, reachable, retrying_deadlocks
from bridge.records import (
    Activation,
    ActivationOutcome,
    AuditEntry,
    AuditTally,
    LoginOpened,
    RateLimit,
    Refusal,
    StoredKey,
)

_SQL_TYPES = {"str": "text", "int": "integer", "bytes": "bytea", "bool": "boolean"}
#: (name, SQL type) of each field of an Activation, in the record's (name) order.
_FIELDS = [
    (f.name, f.metadata.get("sql") or _SQL_TYPES[str(f.type)])
    for f in dataclasses.fields(Activation)
]
# The audit tally's settings are the store's, the same for every row of a batch: they
# follow the record's fields as scalars.
_TALLY = f"p_tally_clients => ${len(_FIELDS) + 1}::integer, " + (
    f"p_tally_window_seconds => ${len(_FIELDS) + 2}::integer"
)
_RESULT = "code, replay, window_ends_at, retry_after, replaced_client_id, limited_by, login_key"

#: The bridge's activation statement for one activation; its arguments are
#: :func:`statement_arguments` (bench/dbceiling.py runs it as it is).
ACTIVATE_STATEMENT = (
    f"SELECT {_RESULT} FROM bridge_activate("
    + ", ".join(f"p_{name} => ${n}::{sql}" for n, (name, sql) in enumerate(_FIELDS, start=1))
    + f", {_TALLY})"
)
# Several activations in one statement: one round trip and one commit for all of them.
# Rows are passed sorted by device, so two batches lock devices in the same order and
# cannot deadlock; a device twice in one batch is decided twice in order, exactly as
# two requests one after the other (the second sees the first's key).
_ACTIVATE_MANY = (
    "SELECT r.n, "
    + ", ".join(f"a.{column}" for column in _RESULT.split(", "))
    + " FROM unnest("
    + ", ".join(f"${n}::{sql}[]" for n, (_, sql) in enumerate(_FIELDS, start=1))
    + ") WITH ORDINALITY AS r("
    + ", ".join(name for name, _ in _FIELDS)
    + ", n) CROSS JOIN LATERAL bridge_activate("
    + ", ".join(f"p_{name} => r.{name}" for name, _ in _FIELDS)
    + f", {_TALLY}) AS a ORDER BY r.n"
)


def statement_arguments(activation: Activation, tally: AuditTally) -> tuple[Any, ...]:
    """The arguments of :data:`ACTIVATE_STATEMENT`, in its order."""
    fields = tuple(getattr(activation, name) for name, _ in _FIELDS)
    return (*fields, tally.clients, tally.window_seconds)


_BATCH_MAX = 32
# Activation statements in flight at once. Few senders mean fuller batches, which cost
# less CPU per activation in PostgreSQL and in the bridge at the same p99 under light
# load (measured: docs/performance.md, "Earlier changes", the senders rows).
# A batch needs one round trip whatever its size, so this does not cap throughput on
# a larger database server either.
_ACTIVATION_SENDERS = 2


def activation_senders(pool: asyncpg.Pool) -> int:
    """How many activation statements a store on ``pool`` keeps in flight."""
    return min(_ACTIVATION_SENDERS, pool.get_max_size())


class ActivationBatcher:
    """Coalesces concurrent activations into one statement when the pool is busy.

    At most ``senders`` statements are in flight (one per pooled connection). An
    activation that arrives while fewer are in flight is sent at once, alone: light load
    pays no extra latency. Those that arrive while all are busy wait together and leave
    as one batch when a sender is free. Measured on the 2-core bench machine, 8 per batch
    halve PostgreSQL's CPU per activation (docs/performance.md).
    """

    def __init__(self, pool: asyncpg.Pool, *, senders: int, tally: AuditTally) -> None:
        self._pool = pool
        self._senders = senders
        self._tally = tally
        self._active = 0
        self._waiting: list[tuple[Activation, asyncio.Future[ActivationOutcome]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, args: Activation) -> ActivationOutcome:
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

    async def _decide(self, batch: list[Activation]) -> list[ActivationOutcome]:
        # Outside the retries: only a deadlock they did not get past becomes Unavailable.
        async with reachable():
            if len(batch) > 1:
                try:
                    return await self._decide_many(batch)
                except asyncpg.DeadlockDetectedError:
                    # Each activation locks its client id (an advisory lock) and its
                    # device, then, when it fails, the counters of its identifier and
                    # model. A batch holds what its first rows locked while its later rows
                    # wait, so two batches (or a batch and a single activation) can wait
                    # on each other. PostgreSQL then rolls one back whole, so deciding
                    # again is safe: one by one, where no batch order is involved.
                    pass
            # Alone, each can still meet a batch that holds what it needs.
            return [
                await retrying_deadlocks(functools.partial(self._decide_one, args))
                for args in batch
            ]

    async def _decide_one(self, args: Activation) -> ActivationOutcome:
        row = await self._pool.fetchrow(ACTIVATE_STATEMENT, *statement_arguments(args, self._tally))
        assert row is not None  # the function always returns one row
        return _outcome(row)

    async def _decide_many(self, batch: list[Activation]) -> list[ActivationOutcome]:
        # Sorted by client id, then device: batches take counter and row locks in one
        # order as far as they can (see _decide for the rest).
        order = sorted(
            range(len(batch)),
            key=lambda i: (batch[i].client_id, batch[i].model_id, batch[i].identifier),
        )
        columns = [[getattr(batch[i], name) for i in order] for name, _ in _FIELDS]
        rows = await self._pool.fetch(
            _ACTIVATE_MANY, *columns, self._tally.clients, self._tally.window_seconds
        )
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
        row["login_key"],
    )


class Activations(Pooled):
    """Activations, refusals and device audit entries, and their housekeeping."""

    _tally: AuditTally
    _batcher: ActivationBatcher

    async def activate(self, activation: Activation) -> ActivationOutcome:
        """Decide one activation (``bridge_activate``), batched under load.

        Alone, this is one round trip. When every sender is busy, the activations that
        wait are sent together (:class:`ActivationBatcher`).
        """
        return await self._batcher.submit(activation)

    async def refuse(self, entry: AuditEntry, limit: RateLimit) -> Refusal:
        """Count a refusal decided before the database and audit it, in one round trip.

        It counts against the client id, and against the model and the identifier when
        the entry names them. ``retry_after`` is set when the answer becomes
        ``rate_limited`` instead (``limited_by`` says which limit).
        """
        async with reachable():
            # It locks the client id, then the shared counters: a batch can hold those.
            row = await retrying_deadlocks(
                lambda: self._pool.fetchrow(
                    "SELECT * FROM bridge_refuse_throttled($1, $2, $3, $4, $5, $6, $7, $8,"
                    " $9, $10, $11, $12, $13, $14, $15, $16)",
                    limit.failures,
                    limit.identifier_failures,
                    limit.model_failures,
                    limit.window_seconds,
                    self._tally.window_seconds,
                    self._tally.clients,
                    # Every audit column but owner: the tally finds the device's owner.
                    *audit_args(entry)[:-1],
                )
            )
        assert row is not None  # the function always returns one row
        return Refusal(row["retry_after"], row["limited_by"])

    async def record(self, entry: AuditEntry) -> None:
        """Audit an outcome decided before the database (not counted by the throttle).

        A device's failure is tallied (one row per client id, code and window, with a
        count: schemas/functions/tally.sql), so anonymous input cannot grow the log
        without bound; anything else is one row.
        """
        async with reachable():
            if entry.actor == "device" and entry.action == "activate" and entry.code != "ok":
                # The tally locks the client id too (see refuse).
                await retrying_deadlocks(
                    lambda: self._pool.execute(
                        "SELECT bridge_tally($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
                        " $12, $13)",
                        self._tally.window_seconds,
                        self._tally.clients,
                        *audit_args(entry),
                    )
                )
            else:
                await self._pool.execute(AUDIT_INSERT, *audit_args(entry))

    async def login_opened(self, login: LoginOpened) -> StoredKey | None:
        """The broker login of an issued key is open: forget the key kept for it.

        Returns the key the device holds now (None: none, after a revoke or release);
        when it is not the one just opened (checked by the caller, under the secret it
        was hashed with), the caller closes the login again. One round trip.
        """
        async with reachable():
            row = await self._pool.fetchrow(
                "WITH forgotten AS (UPDATE replies SET login_key = NULL, login_replaces = NULL"
                " WHERE client_id = $3 AND request_id = $4"
                " AND device_id = (SELECT d.id FROM devices d WHERE d.model_id = $1"
                " AND d.identifier = $2) AND login_key IS NOT NULL)"
                " SELECT state, key_id, key_hash FROM devices"
                " WHERE model_id = $1 AND identifier = $2 AND key_hash IS NOT NULL",
                login.model_id,
                login.identifier,
                login.client_id,
                login.request_id,
            )
        return None if row is None else StoredKey(row["state"], row["key_id"], row["key_hash"])

    async def purge_replies(self) -> int:
        """Forget replies past their grace period; returns how many."""
        async with reachable():
            status = await self._pool.execute("DELETE FROM replies WHERE expires_at <= now()")
        return int(status.split()[-1])

    async def purge_attempts(self, window_seconds: int) -> int:
        """Forget attempt counters whose window has closed; returns how many.

        Tally budgets (scope ``tally``) run over the audit tally's window instead. It
        takes the rows no one holds and waits for none: deleting in the table's order, it
        waited for a counter an activation held (to count a failure in a new window)
        while that activation waited for another counter the purge had deleted but not
        committed, and PostgreSQL rolled the purge back (the bridge's housekeeping, which
        expects only ``Unavailable``, ended the bridge with it). A row busy now is being
        written: its window opens again, or the next purge takes it.
        """
        async with reachable():
            status = await self._pool.execute(
                "DELETE FROM attempt_counters WHERE (scope, subject) IN ("
                "SELECT scope, subject FROM attempt_counters WHERE window_start "
                "+ make_interval(secs => CASE WHEN scope = 'tally' THEN $2::integer "
                "ELSE $1::integer END) <= now() FOR UPDATE SKIP LOCKED)",
                window_seconds,
                self._tally.window_seconds,
            )
        return int(status.split()[-1])
