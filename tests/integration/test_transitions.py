"""The lifecycle transitions of schemas/functions/transitions/, driven directly against a
real PostgreSQL: the orderings that matter when two of them (or one and an activation)
meet on one device, one statement per transition, and who and why in the audit row.

The functions are called as bridge/db/transitions.py calls them, each on a connection
of its own, so that one can hold its transaction open while the other waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.errors import Forbidden, Malformed, NotOwner
from bridge.records import Activation, ActivationOutcome, ModelRow, RateLimit
from bridge.store import Store
from bridge.tokens import Role

MAC = "00:1A:2B:3C:4D:5E"
DEVICE = "001A2B3C4D5E"


def _url(settings: Settings) -> str:
    assert settings.database_url is not None
    return settings.database_url.get_secret_value()


@pytest.fixture
async def connect(settings: Settings) -> AsyncIterator[Callable[[], Awaitable[asyncpg.Connection]]]:
    """Opens connections of the test's own, closed when it ends."""
    opened: list[asyncpg.Connection] = []

    async def open_one() -> asyncpg.Connection:
        conn = await asyncpg.connect(_url(settings))
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        await conn.close()


async def _model(admin: Admin, *, claim: bool = True) -> ModelRow:
    await admin.add_model("acme", "thermo-1", kind="mac", claim_required=claim)
    await admin.approve("acme", "thermo-1", [MAC])
    return await admin.model("acme", "thermo-1")


async def _waiting_for_a_lock(conn: asyncpg.Connection, count: int) -> None:
    """Until ``count`` other sessions of this database wait for a lock."""
    async with asyncio.timeout(10):
        while True:
            waiting = await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.02)


async def _device(conn: asyncpg.Connection) -> asyncpg.Record:
    row = await conn.fetchrow(
        """SELECT d.state, o.name AS owner, d.key_hash, d.client_id, d.window_ends_at,
                  d.revoked_by, (SELECT count(*) FROM replies r WHERE r.device_id = d.id) AS replies
             FROM devices d LEFT JOIN owners o ON o.id = d.owner_id
            WHERE d.identifier = $1""",
        DEVICE,
    )
    assert row is not None
    return row


async def _activate(
    admin: Admin, model: ModelRow, client_id: str, request_id: str
) -> ActivationOutcome:
    limit = RateLimit()
    return await admin.store.activate(
        Activation(
            client_id=client_id,
            client_limit=limit.failures,
            device_logins=True,
            grace_seconds=600,
            identifier=DEVICE,
            identifier_limit=limit.identifier_failures,
            key_hash=b"\x01" * 32,
            key_id="k1",
            model_id=model.id,
            model_limit=limit.model_failures,
            presented=MAC,
            reply=b"sealed reply of " + request_id.encode(),
            request_id=request_id,
            window_seconds=limit.window_seconds,
        )
    )


# -- orderings ---------------------------------------------------------------------


async def test_two_claims_at_once_the_second_waits_and_sees_the_first_owner(
    admin: Admin, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    """The owner row the first claim inserts is new to the second: it must still be seen
    (the owner's name is read after the device lock, not in the locking statement)."""
    model = await _model(admin)
    first, second, watch = await connect(), await connect(), await connect()
    claim = "SELECT * FROM bridge_claim($1, $2, $3, $4, NULL)"
    tx = first.transaction()
    await tx.start()
    won = await first.fetchrow(claim, model.id, DEVICE, "alice", "portal-1")
    assert won is not None and won["status"] == "ok"
    racing = asyncio.create_task(second.fetchrow(claim, model.id, DEVICE, "bob", "portal-2"))
    await _waiting_for_a_lock(watch, 1)
    assert not racing.done()
    await tx.commit()
    lost = await racing
    assert lost is not None
    assert (lost["status"], lost["window_ends_at"]) == ("claimed_by_other", won["window_ends_at"])
    assert (await _device(watch))["owner"] == "alice"
    audit = await watch.fetch(
        "SELECT code, actor, owner FROM audit_log WHERE action = 'claim' ORDER BY id"
    )
    assert [tuple(r) for r in audit] == [
        ("ok", "portal-1", "alice"),
        ("claimed_by_other", "portal-2", "bob"),
    ]
    assert await watch.fetchval("SELECT count(*) FROM claims") == 1


async def test_release_during_an_activation_waits_and_returns_the_new_login(
    admin: Admin, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    """An activation in flight when the owner releases: the release is decided after it,
    so it takes the key the activation stored and names its login for closing."""
    model = await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    holder, releaser, watch = await connect(), await connect(), await connect()
    tx = holder.transaction()  # holds the device row: the activation queues behind it
    await tx.start()
    await holder.execute("SELECT 1 FROM devices WHERE identifier = $1 FOR UPDATE", DEVICE)
    activation = asyncio.create_task(_activate(admin, model, "dev-1", "r-1"))
    await _waiting_for_a_lock(watch, 1)
    release = asyncio.create_task(
        releaser.fetchrow(
            "SELECT * FROM bridge_release($1, $2, $3, $4, NULL)", model.id, DEVICE, "alice", "test"
        )
    )
    await _waiting_for_a_lock(watch, 2)
    await tx.commit()
    activated = await activation
    released = await release
    assert activated.code == "ok" and activated.replay is None
    assert released is not None
    assert (released["status"], released["owner"], released["state"], released["login"]) == (
        "ok",
        "alice",
        "activated",
        "dev-1",
    )
    device = await _device(watch)
    assert (device["state"], device["owner"], device["key_hash"], device["replies"]) == (
        "approved",
        None,
        None,
        0,
    )
    # The stored reply is gone with the key: a retry gets no key of the released device.
    retry = await _activate(admin, model, "dev-1", "r-1")
    assert (retry.code, retry.replay) == ("not_claimed", None)


async def test_transfer_revokes_the_old_key_and_its_stored_reply(
    admin: Admin, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    model = await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    first = await _activate(admin, model, "dev-1", "r-1")
    assert first.code == "ok"
    conn = await connect()
    moved = await conn.fetchrow(
        "SELECT * FROM bridge_transfer($1, $2, $3, $4, NULL, NULL)",
        model.id,
        DEVICE,
        "bob",
        "test",
    )
    assert moved is not None
    assert (moved["status"], moved["owner"], moved["state"], moved["login"]) == (
        "ok",
        "alice",
        "activated",
        "dev-1",
    )
    device = await _device(conn)
    assert (device["state"], device["owner"], device["key_hash"], device["replies"]) == (
        "claimed",
        "bob",
        None,
        0,
    )
    assert device["window_ends_at"] == moved["window_ends_at"] is not None
    # The old request id gets a new key, never the old key's stored reply.
    again = await _activate(admin, model, "dev-1", "r-1")
    assert (again.code, again.replay) == ("ok", None)
    chain = await conn.fetch(
        """SELECT o.name, c.released_at IS NOT NULL AS closed, c.released_by
             FROM claims c JOIN owners o ON o.id = c.owner_id ORDER BY c.id"""
    )
    assert [tuple(r) for r in chain] == [("alice", True, "test"), ("bob", False, None)]


async def test_vendor_revoke_stays_whatever_the_owner_does(
    admin: Admin, settings: Settings, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    model = await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    conn = await connect()

    async def call(name: str, *args: object) -> asyncpg.Record:
        places = ", ".join(f"${n}" for n in range(1, len(args) + 3))
        row = await conn.fetchrow(f"SELECT * FROM bridge_{name}({places})", model.id, DEVICE, *args)
        assert row is not None
        return row

    assert (await call("revoke", "vendor", "acme-desk", None))["status"] == "ok"
    refused = await call("reenable", 600, "owner", "alice", None)
    assert (refused["status"], refused["state"]) == ("revoked_by_vendor", "revoked")
    # Releasing and claiming again does not undo it either.
    assert (await call("release", "alice", "alice", None))["status"] == "ok"
    assert (await call("claim", "alice", "alice", None))["status"] == "ok"
    device = await _device(conn)
    assert (device["state"], device["revoked_by"], device["window_ends_at"]) == (
        "revoked",
        "vendor",
        None,
    )
    assert (await call("reenable", 600, "owner", "alice", None))["status"] == "revoked_by_vendor"
    assert (await call("reenable", 600, "vendor", "acme-desk", None))["status"] == "ok"
    assert (await _device(conn))["state"] == "claimed"
    audit = await conn.fetch(
        "SELECT action, code, actor FROM audit_log WHERE action IN ('revoke', 'reenable') "
        "ORDER BY id"
    )
    assert [tuple(r) for r in audit] == [
        ("revoke", "ok", "acme-desk"),
        ("reenable", "forbidden", "alice"),
        ("reenable", "forbidden", "alice"),
        ("reenable", "ok", "acme-desk"),
    ]
    # Through the use case, an owner is told so in one sentence.
    await call("revoke", "admin", "ops", None)
    owner = Admin(admin.store, settings=settings, actor="alice", role=Role.OWNER)
    with pytest.raises(Forbidden, match="revoked by its vendor"):
        await owner.reenable("acme", "thermo-1", MAC)


async def test_the_window_rule_opens_at_approval_only_without_a_claim_step(
    admin: Admin, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    await admin.add_model("acme", "open", kind="mac", claim_required=False, window_seconds=60)
    await admin.add_model("acme", "claimed", kind="mac", window_seconds=60)
    conn = await connect()
    for model, opened in (("open", True), ("claimed", False)):
        row = await admin.model("acme", model)
        await conn.fetchrow(
            "SELECT * FROM bridge_approve($1, $2, $3, $4, NULL)", row.id, [DEVICE], [DEVICE], "t"
        )
        window = await conn.fetchval(
            "SELECT window_ends_at FROM devices WHERE model_id = $1", row.id
        )
        assert (window is not None) is opened
        # Back to what approval gave it after a claim and a release.
        await conn.fetchrow(
            "SELECT * FROM bridge_claim($1, $2, 'alice', 't', NULL)", row.id, DEVICE
        )
        await conn.fetchrow(
            "SELECT * FROM bridge_release($1, $2, 'alice', 't', NULL)", row.id, DEVICE
        )
        window = await conn.fetchval(
            "SELECT window_ends_at FROM devices WHERE model_id = $1", row.id
        )
        assert (window is not None) is opened
        # Re-enabling an unclaimed device: only where the window may open without a claim.
        status = await conn.fetchval(
            "SELECT status FROM bridge_reenable($1, $2, 60, 'admin', 't', NULL)", row.id, DEVICE
        )
        assert status == ("ok" if opened else "not_claimed")


# -- one statement each ---------------------------------------------------------------


async def test_each_transition_is_one_statement(admin: Admin, settings: Settings) -> None:
    """The round trips bridge/db/transitions.py makes, counted on the driver."""
    model = await _model(admin)
    sent: list[str] = []

    async def log_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda record: sent.append(record.query))

    async def keep_session(conn: asyncpg.Connection) -> None:
        """As the bridge's pool releases a connection: without a reset query."""

    pool = await asyncpg.create_pool(
        _url(settings), min_size=1, max_size=1, init=log_queries, reset=keep_session
    )
    try:
        db = Store(pool)
        second = "000000000002"
        calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("approve", lambda: db.approve(model, [(second, second)], actor="t")),
            ("claim", lambda: db.claim(model, DEVICE, owner="alice", actor="t")),
            ("revoke", lambda: db.revoke(model, DEVICE, by="owner", actor="t")),
            (
                "reenable",
                lambda: db.reenable(model, DEVICE, window_seconds=60, by="owner", actor="t"),
            ),
            ("transfer", lambda: db.transfer(model, DEVICE, to="bob", actor="t")),
            ("release", lambda: db.release(model, DEVICE, owner="bob", actor="t")),
            ("unapprove", lambda: db.unapprove(model, [second], force=False, actor="t")),
        ]
        for name, call in calls:
            sent.clear()
            await call()
            await asyncio.sleep(0)  # loggers are called soon, not at once
            assert len(sent) == 1, (name, sent)
            assert f"bridge_{name}(" in sent[0]
    finally:
        await pool.close()


# -- who and why ----------------------------------------------------------------------


async def _last_audit(admin: Admin, action: str) -> tuple[str | None, str | None, str | None]:
    entries = await admin.audit(vendor="acme", model="thermo-1", limit=1000)
    entry = next(e for e in entries if e.action == action)
    return entry.actor, entry.owner, entry.detail


async def test_approve_records_actor_and_reason(admin: Admin) -> None:
    await _model(admin)
    await admin.approve("acme", "thermo-1", ["00:00:00:00:00:01"], actor="ann", reason="batch 7")
    assert await _last_audit(admin, "approve") == ("ann", None, "reason: batch 7")


async def test_bulk_approve_records_actor_and_reason(admin: Admin, tmp_path: Path) -> None:
    await _model(admin)
    path = tmp_path / "batch.txt"
    path.write_text("00:00:00:00:00:01..00:00:00:00:00:03\n")
    report = await admin.approve_file("acme", "thermo-1", path, actor="ann", reason="batch 7")
    assert report.added == 3
    audited = await admin.audit(identifier="00:00:00:00:00:02", vendor="acme", model="thermo-1")
    assert [(e.action, e.actor, e.detail) for e in audited] == [
        ("approve", "ann", "from batch.txt; reason: batch 7")
    ]


async def test_claim_records_actor_and_reason(admin: Admin) -> None:
    await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice", actor="desk:joe", reason="phone")
    assert await _last_audit(admin, "claim") == ("desk:joe", "alice", "owner=alice; reason: phone")


async def test_unapprove_records_actor_and_reason(admin: Admin) -> None:
    await _model(admin)
    await admin.unapprove("acme", "thermo-1", [MAC], actor="ann", reason="never shipped")
    assert await _last_audit(admin, "unapprove") == (
        "ann",
        None,
        "was approved; reason: never shipped",
    )


async def test_release_by_a_support_desk_shows_in_the_previous_owners_history(
    admin: Admin,
) -> None:
    await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    result = await admin.release(
        "acme", "thermo-1", MAC, owner="alice", actor="support:joe", reason="sold with the house"
    )
    assert result.previous_owner == "alice"
    history = await admin.audit(owner="alice")
    assert (history[0].action, history[0].actor, history[0].owner, history[0].detail) == (
        "release",
        "support:joe",
        "alice",
        "reason: sold with the house",
    )


async def test_transfer_records_actor_and_reason(admin: Admin) -> None:
    await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    await admin.transfer("acme", "thermo-1", MAC, to="bob", actor="ops:kim", reason="ticket 42")
    assert await _last_audit(admin, "transfer") == (
        "ops:kim",
        "bob",
        "from alice; reason: ticket 42",
    )


async def test_reenable_records_actor_and_reason(admin: Admin) -> None:
    await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    await admin.reenable("acme", "thermo-1", MAC, window_seconds=60, actor="ops", reason="new unit")
    assert await _last_audit(admin, "reenable") == (
        "ops",
        "alice",
        "was claimed, window 60s; reason: new unit",
    )


async def test_revoke_records_actor_and_reason(admin: Admin) -> None:
    await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    await admin.revoke("acme", "thermo-1", MAC, actor="ops", reason="stolen")
    assert await _last_audit(admin, "revoke") == (
        "ops",
        "alice",
        "was claimed, by admin; reason: stolen",
    )


async def test_without_actor_and_reason_the_audit_row_is_as_before(admin: Admin) -> None:
    await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    await admin.revoke("acme", "thermo-1", MAC)
    assert await _last_audit(admin, "revoke") == ("test", "alice", "was claimed, by admin")


@pytest.mark.parametrize(
    ("actor", "reason"),
    [
        (None, ""),
        (None, "   "),
        (None, "x" * 501),
        (None, "stolen\x1b[2J"),
        (None, "stolen\u202egnp.exe"),
        (None, "nul\x00byte"),
        (None, "lone \ud800 surrogate"),
        ("", None),
        ("ops\nforged line", None),
        ("x" * 129, None),
    ],
)
async def test_attack_actor_and_reason_that_would_mislead_a_reader_are_refused(
    admin: Admin, actor: str | None, reason: str | None
) -> None:
    """Both are shown in the owner's history, the audit log and terminals."""
    await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    with pytest.raises(Malformed):
        await admin.revoke("acme", "thermo-1", MAC, actor=actor, reason=reason)
    assert (await admin.show("acme", "thermo-1", MAC)).state == "claimed"  # nothing changed
    latest = await admin.audit(vendor="acme", model="thermo-1", limit=1)
    assert [e.action for e in latest] == ["claim"]


async def test_attack_a_transfer_from_a_holder_who_no_longer_holds_it_moves_nothing(
    admin: Admin,
) -> None:
    # Support diagnosed "claimed by alice" and transfers to carol; meanwhile alice
    # released it and bob claimed it. The transfer names the holder it saw: refused.
    await _model(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    await admin.release("acme", "thermo-1", MAC, owner="alice")
    await admin.claim("acme", "thermo-1", MAC, owner="bob")
    with pytest.raises(NotOwner, match="is no longer claimed by alice; nothing was transferred"):
        await admin.transfer("acme", "thermo-1", MAC, to="carol", reason="resale", holder="alice")
    assert (await admin.show("acme", "thermo-1", MAC)).owner == "bob"
    # Naming the holder it has now, it moves.
    moved = await admin.transfer("acme", "thermo-1", MAC, to="carol", reason="x", holder="bob")
    assert moved.previous_owner == "bob"
    assert (await admin.show("acme", "thermo-1", MAC)).owner == "carol"
