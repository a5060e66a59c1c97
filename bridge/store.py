"""The store the bridge holds: its database parts put together.

:class:`Store` is one object over one pool, made of the parts in ``bridge/db/`` (schema,
models, devices, activations, lifecycle transitions, tokens, audit), so callers hold one
store whatever part they use. It does not import asyncpg: ``bridge/db/`` does, and
translates the driver's "unreachable" into :class:`bridge.errors.Unavailable` there, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bridge.db.activations import ActivationBatcher, Activations, activation_senders
from bridge.db.audit import Audit
from bridge.db.devices import Devices
from bridge.db.models import Models
from bridge.db.pool import Pool, open_pool
from bridge.db.schema import Schema, definitions, migrations, schemas_dir
from bridge.db.tokens import Tokens
from bridge.db.transitions import Transitions
from bridge.records import AuditTally

__all__ = ["Store", "definitions", "migrations", "schemas_dir"]


class Store(Schema, Models, Devices, Activations, Transitions, Tokens, Audit):
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
