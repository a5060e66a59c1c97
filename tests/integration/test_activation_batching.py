"""Activations sent together under load decide exactly as they would one by one."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bridge.admin import Admin
from bridge.codes import Code
from bridge.db import activations as activations_module
from bridge.records import Activation, ActivationOutcome, AuditEntry, RateLimit
from bridge.store import Store


@pytest.fixture
async def small_store(database_url: str) -> AsyncIterator[Store]:
    # One connection: while it is busy every other activation waits, so batches form.
    async with Store.open(database_url, pool_size=1) as store:
        yield store


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the size of each statement the batcher sends (it still sends them)."""
    sizes: list[int] = []
    decide = activations_module.ActivationBatcher._decide

    async def recording(
        self: activations_module.ActivationBatcher, batch: list[Activation]
    ) -> list[ActivationOutcome]:
        sizes.append(len(batch))
        return await decide(self, batch)

    monkeypatch.setattr(activations_module.ActivationBatcher, "_decide", recording)
    return sizes


async def _claimed_serials(admin: Admin, count: int) -> tuple[int, list[str]]:
    model = await admin.add_model("acme", "batch-1", kind="serial")
    serials = [f"B{n:05d}" for n in range(count)]
    await admin.approve("acme", "batch-1", serials)
    for serial in serials:
        await admin.claim("acme", "batch-1", serial, owner="alice")
    return model.id, serials


async def _activate(store: Store, model_id: int, identifier: str, client: str) -> str:
    outcome = await store.activate(
        Activation(
            client_id=client,
            # Far above what these tests fail: they are about batching, not throttling.
            client_limit=10_000,
            device_logins=False,
            grace_seconds=600,
            identifier=identifier,
            identifier_limit=10_000,
            key_hash=os.urandom(32),
            key_id="test",
            model_id=model_id,
            model_limit=10_000,
            presented=identifier,
            reply=os.urandom(64),
            request_id="r",
            window_seconds=60,
        )
    )
    return outcome.code


async def test_a_burst_is_batched_and_each_request_gets_its_own_outcome(
    admin: Admin, small_store: Store, batch_sizes: list[int]
) -> None:
    model_id, serials = await _claimed_serials(admin, 30)
    requests = [(s, f"dev-{n}") for n, s in enumerate(serials)]
    requests += [(serials[0], f"twin-{n}") for n in range(5)]  # the same device, 6 times
    requests += [(f"NOPE{n}", f"stranger-{n}") for n in range(5)]
    random.shuffle(requests)

    codes = await asyncio.gather(*(_activate(small_store, model_id, i, c) for i, c in requests))

    by_device = Counter((ident, code) for (ident, _), code in zip(requests, codes, strict=True))
    assert by_device[(serials[0], "ok")] == 1
    assert by_device[(serials[0], "already_activated")] == 5
    assert all(by_device[(s, "ok")] == 1 for s in serials)
    assert sum(n for (i, code), n in by_device.items() if code == "not_approved") == 5
    assert max(batch_sizes) > 1, "a burst on one busy connection should leave in batches"
    assert sum(batch_sizes) == len(requests)


async def test_overlapping_batches_on_several_connections_do_not_deadlock(
    admin: Admin, database_url: str
) -> None:
    model_id, serials = await _claimed_serials(admin, 24)
    async with Store.open(database_url, pool_size=8) as store:
        # Every device requested by sixteen clients, in a different order each time. A
        # client id is one device's (its broker login): a second device activated with
        # it would be client_id_reserved, so each requester uses one per device.
        requests = [
            (s, f"c{n}-{s}") for n in range(16) for s in random.sample(serials, len(serials))
        ]
        async with asyncio.timeout(30):
            codes = await asyncio.gather(*(_activate(store, model_id, i, c) for i, c in requests))
    oks = Counter(i for (i, _), code in zip(requests, codes, strict=True) if code == "ok")
    assert oks == dict.fromkeys(serials, 1)
    assert Counter(codes)["already_activated"] == len(requests) - len(serials)


async def test_an_activation_cancelled_while_waiting_is_not_sent(
    admin: Admin, small_store: Store, database_url: str
) -> None:
    model_id, (held, dropped, later) = await _claimed_serials(admin, 3)
    blocker = await asyncpg.connect(database_url)
    try:
        # Keep the only connection busy: its activation waits for this row lock.
        locking = blocker.transaction()
        await locking.start()
        await blocker.execute(
            "SELECT 1 FROM devices WHERE model_id = $1 AND identifier = $2 FOR UPDATE",
            model_id,
            held,
        )
        first = asyncio.create_task(_activate(small_store, model_id, held, "dev-1"))
        await asyncio.sleep(0.3)
        waiting = asyncio.create_task(_activate(small_store, model_id, dropped, "dev-2"))
        await asyncio.sleep(0.1)
        waiting.cancel()  # as at shutdown: its worker is cancelled before it was sent
        await locking.rollback()
        assert await first == "ok"
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # One connection serves the queue in order: once a later request is answered,
        # the cancelled one would have been sent before it.
        assert await _activate(small_store, model_id, later, "dev-3") == "ok"
        state = await blocker.fetchval(
            "SELECT state FROM devices WHERE model_id = $1 AND identifier = $2",
            model_id,
            dropped,
        )
        assert state == "claimed"
    finally:
        await blocker.close()


async def test_refusals_beside_batches_are_never_lost_to_a_deadlock(database_url: str) -> None:
    """A refusal decided before the database (``refuse``) and a device failure's audit
    entry (``record``) lock the client id and then shared counters, as each row of an
    activation batch does; a batch holding a counter while it waits for the next row's
    client id closes a cycle with them. PostgreSQL breaks it by rolling one back: the
    store sends that one again. Before, the refusal raised (the device was told
    "internal error") and its audit entry was lost: 22 of 3,000 in one run.
    """
    conn = await asyncpg.connect(database_url)
    try:
        # Deadlocks are detected after deadlock_timeout (1 s by default): a short one
        # keeps this test quick and changes nothing else.
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE \"{name}\" SET deadlock_timeout = '20ms'")
        model_id = await conn.fetchval(
            "INSERT INTO models (vendor, model, kind, plaintext_keys) "
            "VALUES ('acme', 'dl-1', 'serial', true) RETURNING id"
        )
    finally:
        await conn.close()
    # No limit is reached: every failure writes its counters, so every lock is taken.
    limit = RateLimit(failures=10**9, identifier_failures=10**9, model_failures=10**9)
    clients = [f"dl-{n}" for n in range(12)]
    rng = random.Random(7)
    outcomes: Counter[str] = Counter()

    async with Store.open(database_url, pool_size=10) as store:

        async def activation(n: int) -> None:
            number = f"X{rng.randrange(50)}"
            await store.activate(
                Activation(
                    client_id=rng.choice(clients),
                    client_limit=limit.failures,
                    device_logins=False,
                    grace_seconds=600,
                    identifier=number,
                    identifier_limit=limit.identifier_failures,
                    key_hash=os.urandom(32),
                    key_id="k",
                    model_id=model_id,
                    model_limit=limit.model_failures,
                    presented=number,
                    reply=os.urandom(64),
                    request_id=f"a{n}",
                    window_seconds=limit.window_seconds,
                )
            )
            outcomes["activation"] += 1

        async def refusal(n: int) -> None:
            number = f"X{rng.randrange(50)}"
            entry = AuditEntry(
                "activate",
                Code.INVALID_IDENTIFIER,
                actor="device",
                client_id=rng.choice(clients),
                request_id=f"r{n}",
                vendor="acme",
                model="dl-1",
                identifier_presented=number,
                identifier=number,
            )
            if n % 4 == 1:
                await store.record(entry)
            else:
                await store.refuse(entry, limit)
            outcomes["refusal"] += 1

        for first in range(0, 3000, 300):
            await asyncio.gather(
                *(activation(n) if n % 2 else refusal(n) for n in range(first, first + 300))
            )
    conn = await asyncpg.connect(database_url)
    try:
        audited = await conn.fetchval(
            "SELECT sum(1 + repeats) FROM audit_log WHERE action = 'activate'"
        )
    finally:
        await conn.close()
    assert outcomes == {"activation": 1500, "refusal": 1500}
    assert audited == 3000
