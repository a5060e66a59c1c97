"""Device lifecycle through the Python API: bulk approval, release, transfer, reenable, revoke,
list and audit, on a real PostgreSQL (and the real broker where a device activates)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from bridge import keys
from bridge.admin import Admin
from bridge.config import Settings
from bridge.errors import ClaimedByOther, Conflict, Malformed, NotApproved, NotClaimed, NotOwner
from tests.helpers import RunningBridge, activate

MAC = "00:1A:2B:3C:4D:5E"
CANONICAL = "001A2B3C4D5E"


async def _model(admin: Admin, *, claim: bool = True) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac", claim_required=claim)


async def _claimed(admin: Admin, mac: str = MAC, owner: str = "alice") -> None:
    await _model(admin)
    await admin.approve("acme", "thermo-1", [mac])
    await admin.claim("acme", "thermo-1", mac, owner=owner)


async def _fetch(settings: Settings, sql: str, *args: object) -> list[asyncpg.Record]:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _key_hash(settings: Settings, identifier: str = CANONICAL) -> bytes | None:
    rows = await _fetch(settings, "SELECT key_hash FROM devices WHERE identifier = $1", identifier)
    value: bytes | None = rows[0]["key_hash"]
    return value


def _valid(settings: Settings, key: str | None, stored: bytes | None) -> bool:
    assert key is not None
    return stored is not None and keys.KeyHasher(settings.server_secret()).verify(key, stored)


def _mac(n: int) -> str:
    raw = f"{n:012X}"
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


# -- bulk approval ----------------------------------------------------------------


async def test_ten_thousand_line_file_loads_and_reports_bad_rows_by_line(
    admin: Admin, settings: Settings, tmp_path: Path
) -> None:
    await _model(admin)
    await admin.approve("acme", "thermo-1", [_mac(7)])  # approved before the import
    lines = [_mac(n) for n in range(10_000)]
    bad = {
        17: "00:1A:2B:3C:4D",  # too short
        4_321: "not-a-mac",
        9_999: "00:1A:2B:3C:4D:5G",
    }
    for line, text in bad.items():
        lines[line - 1] = text
    lines[5_000 - 1] = _mac(4_998)  # a duplicate of line 4999
    path = tmp_path / "numbers.txt"
    path.write_text("\n".join(lines) + "\n")
    seen: list[tuple[str, int, int]] = []

    report = await admin.approve_file("acme", "thermo-1", path, progress=lambda *a: seen.append(a))

    assert [r.line for r in report.refused] == sorted(bad)
    assert [r.text for r in report.refused] == [bad[n] for n in sorted(bad)]
    assert "12" in report.refused[0].reason  # says how many hex digits are needed
    assert report.duplicates == 1
    assert report.already == 1
    assert report.added == 10_000 - len(bad) - 1 - 1
    assert not report.dry_run
    count = await _fetch(settings, "SELECT count(*) AS n FROM devices")
    assert count[0]["n"] == report.added + 1
    assert {phase for phase, _, _ in seen} == {"importing"}
    assert seen[-1][1] == seen[-1][2]  # the bar ends full
    audited = await admin.audit(vendor="acme", model="thermo-1", identifier=_mac(9_000))
    assert [(e.action, e.actor, e.detail) for e in audited] == [
        ("approve", "test", "from numbers.txt")
    ]


async def test_csv_with_identifier_column_and_ranges(
    admin: Admin, settings: Settings, tmp_path: Path
) -> None:
    await _model(admin)
    path = tmp_path / "batch.csv"
    path.write_text(
        "sku,Identifier,note\n"
        'T1,00:00:00:00:00:FE..00:00:00:00:01:01,"a range, across a byte"\n'
        "T1,00-1a-2b-3c-4d-5e,single\n"
        "\n"
        "T1,00:00:00:00:00:09..00:00:00:00:00:01,backwards\n"
    )
    report = await admin.approve_file("acme", "thermo-1", path)
    assert report.added == 5
    assert [(r.line, r.text) for r in report.refused] == [
        (5, "00:00:00:00:00:09..00:00:00:00:00:01")
    ]
    assert "ends before it starts" in report.refused[0].reason
    devices = await admin.list_devices("acme", "thermo-1")
    assert [d.identifier for d in devices] == [
        "0000000000FE",
        "0000000000FF",
        "000000000100",
        "000000000101",
        CANONICAL,
    ]
    no_column = tmp_path / "wrong.csv"
    no_column.write_text("sku,mac\nT1,00:00:00:00:00:01\n")
    with pytest.raises(Malformed, match="no 'identifier' column"):
        await admin.approve_file("acme", "thermo-1", no_column)


async def test_serial_ranges_keep_width_and_imei_ranges_compute_check_digits(
    admin: Admin, tmp_path: Path
) -> None:
    await admin.add_model("acme", "box", kind="serial", pattern=r"SN\d{4,}")
    await admin.add_model("acme", "phone", kind="imei")
    serials = tmp_path / "serials.txt"
    serials.write_text("# batch 7\nsn0098..SN0101\nSN9..SX12\n")
    report = await admin.approve_file("acme", "box", serials)
    assert report.added == 4
    assert [r.line for r in report.refused] == [3]
    devices = await admin.list_devices("acme", "box")
    assert [d.identifier for d in devices] == ["SN0098", "SN0099", "SN0100", "SN0101"]

    imeis = tmp_path / "imeis.txt"
    imeis.write_text("49015420323751..49015420323753\n")
    report = await admin.approve_file("acme", "phone", imeis)
    assert report.added == 3 and not report.refused
    phones = await admin.list_devices("acme", "phone")
    # 490154203237518 is the textbook IMEI; its neighbours get their own check digits.
    assert [d.identifier for d in phones] == [
        "490154203237518",
        "490154203237526",
        "490154203237534",
    ]


async def test_dry_run_writes_nothing(admin: Admin, settings: Settings, tmp_path: Path) -> None:
    await _model(admin)
    await admin.approve("acme", "thermo-1", [_mac(1)])
    before = await _fetch(settings, "SELECT count(*) AS n FROM audit_log")
    path = tmp_path / "n.txt"
    path.write_text(f"{_mac(1)}\n{_mac(2)}..{_mac(4)}\nbad\n")
    report = await admin.approve_file("acme", "thermo-1", path, dry_run=True)
    assert (report.added, report.already, len(report.refused), report.dry_run) == (3, 1, 1, True)
    devices = await admin.list_devices("acme", "thermo-1")
    assert [d.identifier for d in devices] == ["000000000001"]
    after = await _fetch(settings, "SELECT count(*) AS n FROM audit_log")
    assert after[0]["n"] == before[0]["n"]


# -- unapprove --------------------------------------------------------------------


async def test_unapprove_refuses_devices_in_use_unless_forced(admin: Admin) -> None:
    await _claimed(admin)
    await admin.approve("acme", "thermo-1", [_mac(1), _mac(2)])
    report = await admin.unapprove("acme", "thermo-1", [_mac(1), _mac(3)])
    assert (report.removed, report.missing) == (["000000000001"], ["000000000003"])

    with pytest.raises(Conflict, match=r"claimed by alice.*--force"):
        await admin.unapprove("acme", "thermo-1", [_mac(2), MAC])
    assert len(await admin.list_devices("acme", "thermo-1")) == 2  # nothing removed

    report = await admin.unapprove("acme", "thermo-1", [_mac(2), MAC], force=True)
    assert sorted(report.removed) == ["000000000002", CANONICAL]
    assert await admin.list_devices("acme", "thermo-1") == []
    history = await admin.audit(identifier=MAC, vendor="acme", model="thermo-1")
    assert [(e.action, e.code) for e in history[:2]] == [
        ("unapprove", "ok"),
        ("unapprove", "conflict"),
    ]
    assert history[0].detail == "was claimed (forced)"


# -- claim, release, transfer ------------------------------------------------------


async def test_claim_of_someone_elses_device_says_what_to_do(admin: Admin) -> None:
    await _claimed(admin)
    with pytest.raises(ClaimedByOther, match="ask its previous owner to release it"):
        await admin.claim("acme", "thermo-1", MAC, owner="bob")


async def test_release_lets_another_owner_claim_and_closes_the_claim(
    admin: Admin, settings: Settings
) -> None:
    await _claimed(admin)
    with pytest.raises(NotOwner, match="not claimed by bob"):
        await admin.release("acme", "thermo-1", MAC, owner="bob")
    result = await admin.release("acme", "thermo-1", MAC, owner="alice")
    assert (result.identifier, result.previous_owner) == (CANONICAL, "alice")
    device = await admin.show("acme", "thermo-1", MAC)
    assert (device.state, device.owner, device.window_ends_at) == ("approved", None, None)
    with pytest.raises(NotClaimed):
        await admin.release("acme", "thermo-1", MAC, owner="alice")
    with pytest.raises(NotApproved):
        await admin.release("acme", "thermo-1", _mac(99), owner="alice")

    await admin.claim("acme", "thermo-1", MAC, owner="bob")
    chain = await _fetch(
        settings,
        """SELECT o.name, c.released_at IS NOT NULL AS closed, c.released_by
             FROM claims c JOIN owners o ON o.id = c.owner_id ORDER BY c.id""",
    )
    assert [tuple(r) for r in chain] == [("alice", True, "test"), ("bob", False, None)]
    history = await admin.audit(owner="bob")
    assert [(e.action, e.code) for e in history] == [("claim", "ok"), ("release", "not_owner")]


async def test_transfer_moves_the_device_and_is_audited(admin: Admin, settings: Settings) -> None:
    await _claimed(admin)
    result = await admin.transfer("acme", "thermo-1", MAC, to="bob")
    assert result.previous_owner == "alice"
    assert (await admin.show("acme", "thermo-1", MAC)).owner == "bob"
    with pytest.raises(Conflict, match="already belongs to bob"):
        await admin.transfer("acme", "thermo-1", MAC, to="bob")
    await admin.approve("acme", "thermo-1", [_mac(5)])
    with pytest.raises(NotClaimed):
        await admin.transfer("acme", "thermo-1", _mac(5), to="bob")
    entry = (await admin.audit(identifier=MAC, vendor="acme", model="thermo-1"))[1]
    assert (entry.action, entry.code, entry.owner, entry.actor, entry.detail) == (
        "transfer",
        "ok",
        "bob",
        "test",
        "from alice",
    )
    open_claims = await _fetch(
        settings,
        """SELECT o.name FROM claims c JOIN owners o ON o.id = c.owner_id
            WHERE c.released_at IS NULL""",
    )
    assert [r["name"] for r in open_claims] == ["bob"]


async def test_two_owners_claiming_at_once_exactly_one_wins(
    admin: Admin, settings: Settings
) -> None:
    await _model(admin)
    macs = [_mac(n) for n in range(1, 9)]
    await admin.approve("acme", "thermo-1", macs)
    async with (
        Admin.connect(settings, actor="portal-1") as one,
        Admin.connect(settings, actor="portal-2") as two,
    ):
        for mac in macs:
            results = await asyncio.gather(
                one.claim("acme", "thermo-1", mac, owner="alice"),
                two.claim("acme", "thermo-1", mac, owner="bob"),
                return_exceptions=True,
            )
            wins = [r for r in results if not isinstance(r, BaseException)]
            losses = [r for r in results if isinstance(r, BaseException)]
            assert len(wins) == 1 and len(losses) == 1, results
            assert isinstance(losses[0], ClaimedByOther)
    open_claims = await _fetch(
        settings, "SELECT count(*) AS n FROM claims WHERE released_at IS NULL"
    )
    assert open_claims[0]["n"] == len(macs)


# -- through the broker: release, reenable, revoke --------------------------------


async def test_release_claim_by_another_reenable_activate_story(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _claimed(admin)
    first = await activate(settings, MAC, client_id="dev-1", request_id="r-1")
    assert first.ok, first.reply
    assert _valid(settings, first.key, await _key_hash(settings))

    await admin.release("acme", "thermo-1", MAC, owner="alice")
    assert await _key_hash(settings) is None  # the old key stopped being valid
    await admin.claim("acme", "thermo-1", MAC, owner="bob")
    result = await admin.reenable("acme", "thermo-1", MAC, window_seconds=600)
    assert result.window_ends_at is not None
    left = (result.window_ends_at - datetime.now(UTC)).total_seconds()
    assert 590 < left <= 600

    # The device retries with its old request id: no replay of the old key.
    second = await activate(settings, MAC, client_id="dev-1", request_id="r-1")
    assert second.ok, second.reply
    assert second.key != first.key
    stored = await _key_hash(settings)
    assert _valid(settings, second.key, stored)
    assert not _valid(settings, first.key, stored)
    device = await admin.show("acme", "thermo-1", MAC)
    assert (device.state, device.owner) == ("activated", "bob")
    activation = await admin.audit(owner="bob", code="ok", vendor="acme", model="thermo-1")
    assert activation[0].action == "activate"  # the owner is filled in for activations
    assert first.key is not None and second.key is not None
    history = json.dumps([e.__dict__ for e in await admin.audit(limit=1000)], default=str)
    assert first.key not in history and second.key not in history


async def test_reenable_keeps_the_old_key_until_the_next_activation(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _claimed(admin)
    first = await activate(settings, MAC, client_id="dev-1", request_id="r-1")
    assert first.ok, first.reply
    await admin.reenable("acme", "thermo-1", MAC)
    assert _valid(settings, first.key, await _key_hash(settings))
    assert (await admin.show("acme", "thermo-1", MAC)).state == "claimed"
    again = await activate(settings, MAC, client_id="dev-1", request_id="r-1")
    assert again.ok and again.key != first.key
    assert not _valid(settings, first.key, await _key_hash(settings))
    third = await activate(settings, MAC, client_id="dev-1", request_id="r-2")
    assert third.reply["code"] == "already_activated"

    await admin.approve("acme", "thermo-1", [_mac(3)])
    with pytest.raises(NotClaimed, match="claim it first"):
        await admin.reenable("acme", "thermo-1", _mac(3))


async def test_revoke_answers_revoked_until_reenabled(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _claimed(admin)
    first = await activate(settings, MAC, client_id="dev-1", request_id="r-1")
    assert first.ok, first.reply
    await admin.revoke("acme", "thermo-1", MAC)
    assert await _key_hash(settings) is None
    replay = await activate(settings, MAC, client_id="dev-1", request_id="r-1")
    assert replay.reply["code"] == "revoked"
    fresh = await activate(settings, MAC, client_id="dev-1", request_id="r-2")
    assert fresh.reply["code"] == "revoked"
    with pytest.raises(Conflict, match="already revoked"):
        await admin.revoke("acme", "thermo-1", MAC)

    await admin.reenable("acme", "thermo-1", MAC)
    back = await activate(settings, MAC, client_id="dev-1", request_id="r-3")
    assert back.ok and back.key != first.key

    await admin.approve("acme", "thermo-1", [_mac(3)])
    with pytest.raises(NotClaimed):
        await admin.revoke("acme", "thermo-1", _mac(3))
    history = await admin.audit(identifier=MAC, vendor="acme", model="thermo-1")
    # The device's two refusals are one tallied entry (schemas/008): counted, not repeated.
    assert [(e.action, e.code, e.count) for e in history[:5]] == [
        ("activate", "ok", 1),
        ("reenable", "ok", 1),
        ("revoke", "conflict", 1),
        ("activate", "revoked", 2),
        ("revoke", "ok", 1),
    ]


# -- list and audit ---------------------------------------------------------------


async def test_list_pages_with_filters(admin: Admin) -> None:
    await _model(admin)
    await admin.approve("acme", "thermo-1", [_mac(n) for n in range(25)])
    for n in (3, 4, 20):
        await admin.claim("acme", "thermo-1", _mac(n), owner="alice")
    await admin.claim("acme", "thermo-1", _mac(5), owner="bob")
    pages: list[list[str]] = []
    after = None
    while True:
        page = await admin.list_devices("acme", "thermo-1", limit=10, after=after)
        if not page:
            break
        pages.append([d.identifier for d in page])
        after = page[-1].identifier
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i for p in pages for i in p] == [f"{n:012X}" for n in range(25)]
    alices = await admin.list_devices("acme", "thermo-1", owner="alice", limit=2)
    assert [d.identifier for d in alices] == [f"{3:012X}", f"{4:012X}"]
    rest = await admin.list_devices(
        "acme", "thermo-1", owner="alice", after=_mac(4), state="claimed"
    )
    assert [d.identifier for d in rest] == [f"{20:012X}"]
    assert len(await admin.list_devices("acme", "thermo-1", state="approved")) == 21
    with pytest.raises(Malformed):
        await admin.list_devices("acme", "thermo-1", state="lost")


async def test_audit_filters_newest_first(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _claimed(admin)
    start = datetime.now(UTC)
    await activate(settings, "00:1a:2b:3c:4d:5f", client_id="dev-9", request_id="x")
    await activate(settings, MAC, client_id="dev-1", request_id="y")

    by_spelling = await admin.audit(identifier="001a.2b3c.4d5e")  # no model: any kind
    assert [e.action for e in by_spelling] == ["activate", "claim", "approve"]
    assert by_spelling[0].owner == "alice" and by_spelling[0].actor == "device"
    refused = await admin.audit(code="not_approved")
    assert [(e.client_id, e.identifier) for e in refused] == [("dev-9", "001A2B3C4D5F")]
    assert [e.request_id for e in await admin.audit(client_id="dev-1")] == ["y"]
    recent = await admin.audit(since=start)
    assert [e.action for e in recent] == ["activate", "activate"]
    assert await admin.audit(since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert len(await admin.audit(limit=2)) == 2
    assert [e.action for e in await admin.audit(vendor="acme", model="thermo-1")][-1] == (
        "model_add"
    )
