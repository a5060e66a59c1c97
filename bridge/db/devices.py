"""Reading devices: one device, a model's list, an owner's, look-alikes, a stored key."""

from __future__ import annotations

from typing import Any

from bridge.db.pool import Pooled, reachable
from bridge.records import DeviceRow, ModelRow, StoredKey


class Devices(Pooled):
    """Reads of the devices table (the transitions that change it: bridge/db/transitions.py)."""

    async def stored_key(self, model: ModelRow, identifier: str) -> StoredKey | None:
        """The keyed hash of a device's current key (None when it has none)."""
        async with reachable():
            row = await self._pool.fetchrow(
                """SELECT state, key_id, key_hash FROM devices
                    WHERE model_id = $1 AND identifier = $2 AND key_hash IS NOT NULL""",
                model.id,
                identifier,
            )
        return StoredKey(**dict(row)) if row is not None else None

    async def login_of(self, model: ModelRow, identifier: str) -> str | None:
        """The client id whose broker login holds the device's key (None: never activated)."""
        async with reachable():
            client_id: str | None = await self._pool.fetchval(
                "SELECT client_id FROM devices WHERE model_id = $1 AND identifier = $2",
                model.id,
                identifier,
            )
        return client_id

    async def lookalikes(self, model: ModelRow, key: str, limit: int = 5) -> list[str]:
        """Approved identifiers whose folded form equals ``key`` (an index probe)."""
        async with reachable():
            rows = await self._pool.fetch(
                "SELECT identifier FROM devices WHERE model_id = $1 AND lookalike = $2 LIMIT $3",
                model.id,
                key,
                limit,
            )
        return [r["identifier"] for r in rows]

    async def show(self, model: ModelRow, identifier: str) -> DeviceRow | None:
        async with reachable():
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

    async def owner_devices(self, owner: str, *, limit: int = 500) -> list[tuple[DeviceRow, str]]:
        """(device, model kind) of the devices ``owner`` holds, by vendor, model, identifier."""
        async with reachable():
            rows = await self._pool.fetch(
                """SELECT m.vendor, m.model, d.identifier, d.state, o.name AS owner,
                          d.window_ends_at, d.activated_at, d.approved_at, d.key_id, m.kind
                     FROM owners o
                     JOIN devices d ON d.owner_id = o.id
                     JOIN models m ON m.id = d.model_id
                    WHERE o.name = $1
                    ORDER BY m.vendor, m.model, d.identifier
                    LIMIT $2""",
                owner,
                limit,
            )
        return [(DeviceRow(**{k: v for k, v in r.items() if k != "kind"}), r["kind"]) for r in rows]

    async def list_devices(
        self,
        model: ModelRow,
        *,
        state: str | None = None,
        owner: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[DeviceRow]:
        """One page of a model's devices in identifier order (keyset paging on ``after``)."""
        where = ["d.model_id = $1"]
        args: list[Any] = [model.id, model.vendor, model.model]
        for clause, value in (
            ("d.state = ${}", state),
            ("d.owner_id = (SELECT id FROM owners WHERE name = ${})", owner),
            ("d.identifier > ${}", after),
        ):
            if value is not None:
                args.append(value)
                where.append(clause.format(len(args)))
        args.append(limit)
        sql = f"""SELECT $2::text AS vendor, $3::text AS model, d.identifier, d.state,
                         o.name AS owner, d.window_ends_at, d.activated_at, d.approved_at,
                         d.key_id
                    FROM devices d LEFT JOIN owners o ON o.id = d.owner_id
                   WHERE {" AND ".join(where)}
                   ORDER BY d.identifier
                   LIMIT ${len(args)}"""
        async with reachable():
            rows = await self._pool.fetch(sql, *args)
        return [DeviceRow(**dict(r)) for r in rows]
