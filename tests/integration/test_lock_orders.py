"""Hostile orderings of database work: no decision, audit row or answer is lost to a
deadlock, and one that cannot be broken by sending the statement again is answered
``unavailable`` (HTTP 503), never as an internal error.

Each test sets a short ``deadlock_timeout`` on its own database: PostgreSQL then breaks
a cycle after 20 ms instead of 1 s, which keeps the test quick and changes nothing else.
The load is seeded, so a run is repeatable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from bridge.admin import Admin
from bridge.codes import Code
from bridge.config import Settings
from bridge.db import pool as pool_module
from bridge.errors import Unavailable
from bridge.records import Activation, AuditEntry, ModelRow, RateLimit
from bridge.store import Store
from bridge.tokens import create_token
from bridge.web.app import create_app

#: No limit is reached: every failure writes its counters, so every lock is taken.
_NO_LIMIT = 10**9


async def _model(database_url: str, *, deadlock_timeout: str = "20ms") -> None:
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE \"{name}\" SET deadlock_timeout = '{deadlock_timeout}'")
        await conn.execute(
            "INSERT INTO models (vendor, model, kind, plaintext_keys) "
            "VALUES ('acme', 'lk-1', 'serial', true)"
        )
    finally:
        await conn.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    await _model(database_url)
    async with Store.open(database_url, pool_size=8) as opened:
        yield opened


async def _acme(store: Store) -> ModelRow:
    model = await store.get_model("acme", "lk-1")
    assert model is not None
    return model


def _activation(model_id: int, client: str, number: str, request: str) -> Activation:
    return Activation(
        client_id=client,
        client_limit=_NO_LIMIT,
        device_logins=False,
        grace_seconds=600,
        identifier=number,
        identifier_limit=_NO_LIMIT,
        key_hash=os.urandom(32),
        key_id="k",
        model_id=model_id,
        model_limit=_NO_LIMIT,
        presented=number,
        reply=os.urandom(64),
        request_id=request,
        window_seconds=60,
    )


async def _audited(database_url: str, action: str) -> int:
    """Attempts of ``action`` the audit log accounts for (a tallied row counts its repeats)."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT coalesce(sum(1 + repeats), 0) FROM audit_log WHERE action = $1", action
        )
    finally:
        await conn.close()
    return count


async def _counted(outcomes: Counter[str], name: str, work: Awaitable[object]) -> None:
    # The exception's type is what the assertion shows when a count is off.
    try:
        await work
    except Exception as exc:
        outcomes[f"{name}: {type(exc).__name__}"] += 1
    else:
        outcomes[name] += 1


async def test_approvals_of_one_list_in_different_orders_never_deadlock(
    store: Store, database_url: str
) -> None:
    """Each approval inserts its identifiers and waits for a row another approval has
    inserted but not committed: two approvals of one list in different orders (two
    scripts, a retried request) each held what the other waited for, and one of them
    failed: 24 of 120 in one run."""
    model = await _acme(store)
    rng = random.Random(11)
    outcomes: Counter[str] = Counter()
    for batch in range(25):
        numbers = [f"A{batch}N{n:03d}" for n in range(60)]
        orders = [rng.sample(numbers, len(numbers)) for _ in range(4)]
        await asyncio.gather(
            *(
                _counted(
                    outcomes, "approve", store.approve(model, [(n, n) for n in order], actor="t")
                )
                for order in orders
            )
        )
    assert outcomes == {"approve": 100}
    # Each identifier approved, and audited, once.
    assert await _audited(database_url, "approve") == 25 * 60


async def test_approvals_beside_a_bulk_import_never_deadlock(
    store: Store, database_url: str
) -> None:
    """A bulk import sorts each batch, but a later batch may hold smaller identifiers
    than an earlier one; an approval of some of both could hold a row the import waits
    for while waiting for one the import inserted. PostgreSQL rolled back one of them,
    often the import, whole (13 of 30 in one run): now only its batch is undone and sent
    again, and an approval is sent again."""
    model = await _acme(store)
    rng = random.Random(14)
    outcomes: Counter[str] = Counter()

    async def bulk_import(numbers: list[str]) -> None:
        async with store.bulk_approver(model, actor="t") as load:
            for end in range(len(numbers), 0, -20):  # the largest identifiers first
                await load([(n, n) for n in numbers[end - 20 : end]])
                await asyncio.sleep(0.005)  # as while the next batch is parsed

    for batch in range(30):
        numbers = [f"B{batch}N{n:03d}" for n in range(100)]
        work = [_counted(outcomes, "import", bulk_import(numbers))]
        for _ in range(6):
            pairs = [(n, n) for n in rng.sample(numbers, 30)]
            work.append(_counted(outcomes, "approve", store.approve(model, pairs, actor="t")))
        await asyncio.gather(*work)
    assert outcomes == {"import": 30, "approve": 180}
    assert await _audited(database_url, "approve") == 30 * 100


async def _refused_behind_an_import(
    database_url: str, model: ModelRow, attempt: Callable[[], Awaitable[object]]
) -> None:
    """``attempt`` meets an import in progress into ``model``: it waits about 5 s, then
    is refused with the sentence that says why."""
    importer = await asyncpg.connect(database_url)
    try:
        async with importer.transaction():
            await importer.execute("SELECT bridge_bulk_approve_begin($1)", model.id)
            started = time.monotonic()
            with pytest.raises(Unavailable) as refused:
                await attempt()
            waited = time.monotonic() - started
    finally:
        await importer.close()
    assert 4.5 < waited < 10
    assert refused.value.message == (
        "An approval file is being imported into this model; try again when the import "
        "has finished."
    )


async def test_an_approval_waits_for_an_import_a_while_then_is_unavailable(
    store: Store, database_url: str
) -> None:
    """Approvals take turns with the model's imports: one that meets an import waits for
    it, up to 5 s, then is told why it was not done; after the import it goes through."""
    model = await _acme(store)
    await _refused_behind_an_import(
        database_url, model, lambda: store.approve(model, [("W1", "W1")], actor="t")
    )
    assert await store.approve(model, [("W1", "W1")], actor="t") == (1, 0)


async def test_a_second_import_waits_for_the_first_a_while_then_is_told_why(
    store: Store, database_url: str
) -> None:
    """Imports into one model take turns. A second one waited until the driver's timeout
    (15 s) and was told "the database cannot be reached"; it waits 5 s, then hears that
    an import is in progress, and goes through once the first has finished."""
    model = await _acme(store)

    async def second_import() -> None:
        async with store.bulk_approver(model, actor="t") as load:
            await load([("X1", "X1")])

    await _refused_behind_an_import(database_url, model, second_import)
    async with store.bulk_approver(model, actor="t") as load:
        assert await load([("X1", "X1")]) == (1, 0, 0)


async def test_unapprovals_beside_activation_batches_are_never_lost_to_a_deadlock(
    store: Store, database_url: str
) -> None:
    """An unapproval locks its devices in identifier order; a batch of activations locks
    them in client id order (activations.py), one row after another. Each can hold a
    device the other waits for, and PostgreSQL rolls one back: a batch is decided again
    one by one, and the unapproval failed: 38 of 200 in one run."""
    model = await _acme(store)
    rng = random.Random(12)
    numbers = [f"U{n:03d}" for n in range(40)]
    # A claimed device on every list: each unapproval is refused (nothing removed, the
    # refusal audited) after it has locked all its devices.
    await store.approve(model, [(n, n) for n in [*numbers, "HELD"]], actor="t")
    await store.claim(model, "HELD", owner="alice", actor="t")
    clients = [f"c{n}" for n in range(20)]
    outcomes: Counter[str] = Counter()
    for burst in range(15):
        work = []
        for n in range(200):
            if n % 20 == 0:
                listed = ["HELD", *rng.sample(numbers, 15)]
                unapproval = store.unapprove(model, listed, force=False, actor="t")
                work.append(_counted(outcomes, "unapprove", unapproval))
            else:
                # Not claimed yet: each fails, so it also locks its counters.
                activation = _activation(
                    model.id, rng.choice(clients), rng.choice(numbers), f"r{burst}-{n}"
                )
                work.append(_counted(outcomes, "activate", store.activate(activation)))
        await asyncio.gather(*work)
    assert outcomes == {"unapprove": 150, "activate": 2850}
    assert await _audited(database_url, "unapprove") == 150
    assert await _audited(database_url, "activate") == 2850


async def test_an_unapproval_waits_for_a_busy_device_a_while_then_is_unavailable(
    store: Store, database_url: str
) -> None:
    """An unapproval waits, holding none of its devices, while one is busy; after 5 s it
    is told so and nothing was removed; once the device is free it goes through."""
    model = await _acme(store)
    await store.approve(model, [("V1", "V1"), ("V2", "V2")], actor="t")
    busy = await asyncpg.connect(database_url)
    try:
        async with busy.transaction():
            await busy.execute("SELECT 1 FROM devices WHERE identifier = 'V2' FOR UPDATE")
            started = time.monotonic()
            unapproval = asyncio.create_task(
                store.unapprove(model, ["V1", "V2"], force=False, actor="t")
            )
            await asyncio.sleep(1)
            # It holds none while it waits: V1 is free for anyone else (a savepoint, so
            # that this session keeps holding V2 whatever the answer).
            async with busy.transaction():
                free = await busy.fetchval(
                    "SELECT identifier FROM devices WHERE identifier = 'V1' FOR UPDATE NOWAIT"
                )
            with pytest.raises(Unavailable) as refused:
                await unapproval
            waited = time.monotonic() - started
    finally:
        await busy.close()
    assert free == "V1"
    assert 4.5 < waited < 10
    assert "nothing was unapproved" in refused.value.message
    removed = await store.unapprove(model, ["V1", "V2"], force=False, actor="t")
    assert removed.removed == ["V1", "V2"]


async def test_housekeeping_beside_activations_never_deadlocks(
    store: Store, database_url: str
) -> None:
    """The purge of closed throttle windows deleted expired counters in the table's
    order, waiting for each one an activation held, while the activation (client
    counter first, then the model's and the number's) waited for one the purge had
    deleted but not committed. The purge failed (14 of 18 in one run), and the bridge's
    housekeeping task, which expects only ``Unavailable``, ended the bridge with it.
    """
    model = await _acme(store)
    rng = random.Random(13)
    limit = RateLimit(failures=_NO_LIMIT, identifier_failures=_NO_LIMIT, model_failures=_NO_LIMIT)
    clients = [f"c{n}" for n in range(300)]
    numbers = [f"P{n:03d}" for n in range(300)]
    outcomes: Counter[str] = Counter()
    for burst in range(6):
        conn = await asyncpg.connect(database_url)
        try:
            # Closed windows for every counter the load writes (client ids, numbers,
            # the model), in an order of their own, and many more to keep the purge busy.
            await conn.execute(
                """INSERT INTO attempt_counters (scope, subject, window_start, failures)
                   SELECT scope, subject, now() - interval '2 hours', 1 FROM (
                       SELECT 'client' AS scope, 'c' || n AS subject, n
                         FROM generate_series(0, 299) n
                       UNION ALL
                       SELECT 'identifier', $1 || '/P' || lpad(n::text, 3, '0'), n
                         FROM generate_series(0, 299) n
                       UNION ALL
                       SELECT 'model', $1, 150) AS closed
                    ORDER BY n DESC, scope
                   ON CONFLICT (scope, subject)
                   DO UPDATE SET window_start = EXCLUDED.window_start""",
                str(model.id),
            )
            await conn.execute(
                """INSERT INTO attempt_counters (scope, subject, window_start, failures)
                   SELECT 'client', 'old-' || n, now() - interval '2 hours', 1
                     FROM generate_series(1, 20000) n
                   ON CONFLICT (scope, subject) DO NOTHING"""
            )
        finally:
            await conn.close()
        work = [_counted(outcomes, "purge", store.purge_attempts(60)) for _ in range(3)]
        for n in range(300):
            client, number = rng.choice(clients), rng.choice(numbers)
            if n % 3:
                activation = _activation(model.id, client, number, f"r{burst}-{n}")
                work.append(_counted(outcomes, "activate", store.activate(activation)))
            else:
                entry = AuditEntry(
                    "activate",
                    Code.INVALID_IDENTIFIER,
                    actor="device",
                    client_id=client,
                    request_id=f"q{burst}-{n}",
                    vendor="acme",
                    model="lk-1",
                    identifier_presented=number,
                    identifier=number,
                )
                work.append(_counted(outcomes, "refuse", store.refuse(entry, limit)))
        rng.shuffle(work)
        await asyncio.gather(*work)
    assert outcomes == {"purge": 18, "activate": 1200, "refuse": 600}
    assert await _audited(database_url, "activate") == 1800
    conn = await asyncpg.connect(database_url)
    try:
        # Skipping what is busy still purges: no one wrote these.
        left = await conn.fetchval(
            "SELECT count(*) FROM attempt_counters WHERE subject LIKE 'old-%'"
        )
    finally:
        await conn.close()
    assert left == 0


@contextlib.asynccontextmanager
async def _cycle(database_url: str, first: str, second: str) -> AsyncIterator[None]:
    """Another session that does ``first``, lets the caller's work wait for it (the block
    starts that work), then, as the block ends, does ``second``, which waits for that
    work: a deadlock. The session waits 10 s before it checks for one, so the caller's work
    (1 s, as set on the database) is the one rolled back."""
    other = await asyncpg.connect(database_url)
    waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
    try:
        await other.execute("SET deadlock_timeout = '10s'")
        async with other.transaction():
            await other.execute(first)
            yield
            async with asyncio.timeout(10):
                while not await other.fetchval(waiting):  # noqa: ASYNC110 (another session, polled)
                    await asyncio.sleep(0.01)
            await other.execute(second)
    finally:
        await other.close()


async def test_a_deadlock_the_api_meets_is_answered_unavailable(
    database_url: str, settings: Settings
) -> None:
    """An approval over HTTP that PostgreSQL rolls back to break a deadlock (made here by
    a second session inserting its identifiers in the other order) is answered 503
    ``unavailable`` with a sentence and Retry-After. Before, the API answered 500
    "internal", as for a bug."""
    await _model(database_url, deadlock_timeout="1s")
    async with Admin.connect(settings, actor="test") as admin:
        model = await admin.model("acme", "lk-1")
        issued = await create_token(admin.store, "vendor", "acme", actor="test")
        app = create_app(admin.store, settings)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        insert = (
            "INSERT INTO devices (model_id, identifier, lookalike) "
            f"VALUES ({model.id}, '{{0}}', '{{0}}')"
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as api:
            async with _cycle(database_url, insert.format("SECOND"), insert.format("FIRST")):
                answer = asyncio.create_task(
                    api.post(
                        "/v1/models/acme/lk-1/approvals",
                        json={"identifiers": ["FIRST", "SECOND"]},
                        headers={"Authorization": f"Bearer {issued.token}"},
                    )
                )
            response = await answer
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "unavailable"
    assert "deadlock" in response.json()["message"]
    assert int(response.headers["Retry-After"]) >= 1


async def test_a_refusal_still_deadlocked_after_its_retries_is_unavailable(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device's refusal rolled back to break a deadlock each time it is sent is
    answered ``unavailable`` (the device retries), not "internal error"."""
    await _model(database_url, deadlock_timeout="1s")
    monkeypatch.setattr(pool_module, "DEADLOCK_RETRIES", 0)  # every attempt meets one
    limit = RateLimit(failures=_NO_LIMIT, identifier_failures=_NO_LIMIT, model_failures=_NO_LIMIT)
    entry = AuditEntry(
        "activate",
        Code.INVALID_IDENTIFIER,
        actor="device",
        client_id="dev-1",
        request_id="r1",
        vendor="acme",
        model="lk-1",
        identifier_presented="X1",
        identifier="X1",
    )
    async with Store.open(database_url, pool_size=2) as store:
        model = await _acme(store)
        # The model's counter first (as a batch's earlier row), then the client id.
        counter = (
            "INSERT INTO attempt_counters (scope, subject, window_start, failures) "
            f"VALUES ('model', '{model.id}', now(), 1)"
        )
        client = "SELECT pg_advisory_xact_lock(1668049252, hashtext('dev-1'))"
        async with _cycle(database_url, counter, client):
            refusal = asyncio.create_task(store.refuse(entry, limit))
        with pytest.raises(Unavailable) as refused:
            await refusal
    assert "deadlock" in refused.value.message
