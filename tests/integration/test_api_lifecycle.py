"""The lifecycle over HTTP on a real PostgreSQL: release and re-enable (owner), revoke,
unapprove, bulk approve, list and audit (vendor), transfer (administrator), each within
its token's boundary."""

from __future__ import annotations

import httpx
import pytest

from bridge.admin import Admin
from bridge.errors import NotOwner
from tests.helpers import bearer

MAC = "00:1A:2B:3C:4D:5E"
DEVICE = f"/v1/devices/acme/thermo-1/{MAC}"


@pytest.fixture
async def acme(admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac", window_seconds=7200)
    await admin.approve("acme", "thermo-1", [MAC, "00:1A:2B:3C:4D:5F"])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")


@pytest.mark.usefixtures("acme")
async def test_owner_releases_and_reenables_only_their_own_device(
    admin: Admin, api: httpx.AsyncClient
) -> None:
    alice = await bearer(admin, "owner", "alice")
    bob = await bearer(admin, "owner", "bob")

    for action in ("release", "reenable"):
        foreign = await api.post(f"{DEVICE}/{action}", headers=bob)
        assert foreign.status_code == 404, action
        assert foreign.json() == {
            "code": "not_found",
            "message": f"There is no MAC address {MAC} of acme/thermo-1 in your account.",
        }
    assert (await admin.show("acme", "thermo-1", MAC)).owner == "alice"

    reenabled = await api.post(f"{DEVICE}/reenable", headers=alice)
    assert reenabled.status_code == 200, reenabled.text
    assert reenabled.json()["message"] == (
        f"A new activation window is open for the MAC address {MAC} (acme/thermo-1) "
        "for 2 hours; switch the device on to activate it again."
    )
    assert reenabled.json()["device"]["window_seconds_left"] > 7100

    released = await api.post(f"{DEVICE}/release", headers=alice)
    assert released.status_code == 200
    assert "is no longer in your account" in released.json()["message"]
    assert released.json()["device"]["owner"] is None
    assert (await api.get("/v1/devices", headers=alice)).json() == {"devices": []}
    # Now Bob may claim it; Alice asking for it again gets 404.
    claimed = await api.post(
        "/v1/claims", json={"vendor": "acme", "model": "thermo-1", "identifier": MAC}, headers=bob
    )
    assert claimed.status_code == 200
    assert (await api.post(f"{DEVICE}/release", headers=alice)).status_code == 404
    # Vendors and administrators do not release on an owner's behalf.
    vendor = await bearer(admin, "vendor", "acme")
    assert (await api.post(f"{DEVICE}/release", headers=vendor)).json()["code"] == "forbidden"


@pytest.mark.usefixtures("acme")
async def test_vendor_revokes_reenables_lists_and_reads_audit_of_its_models_only(
    admin: Admin, api: httpx.AsyncClient
) -> None:
    acme = await bearer(admin, "vendor", "acme")
    globex = await bearer(admin, "vendor", "globex")
    alice = await bearer(admin, "owner", "alice")

    for path in (f"{DEVICE}/revoke", f"{DEVICE}/reenable"):
        answer = await api.post(path, headers=globex)
        assert answer.status_code == 404 and answer.json()["code"] == "unknown_model", path
    assert (await api.post(f"{DEVICE}/revoke", headers=alice)).json()["code"] == "forbidden"

    revoked = await api.post(f"{DEVICE}/revoke", headers=acme)
    assert revoked.status_code == 200
    assert revoked.json()["device"]["state"] == "revoked"
    again = await api.post(f"{DEVICE}/revoke", headers=acme)
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    reenabled = await api.post(f"{DEVICE}/reenable", headers=acme)
    assert reenabled.json()["device"]["state"] == "claimed"

    page = await api.get("/v1/models/acme/thermo-1/devices", params={"limit": 1}, headers=acme)
    assert page.status_code == 200
    first = page.json()
    assert [d["identifier"] for d in first["devices"]] == [MAC]
    assert first["next_after"] == MAC
    rest = await api.get(
        "/v1/models/acme/thermo-1/devices", params={"after": MAC, "limit": 1}, headers=acme
    )
    assert [d["identifier"] for d in rest.json()["devices"]] == ["00:1A:2B:3C:4D:5F"]
    claimed = await api.get(
        "/v1/models/acme/thermo-1/devices", params={"state": "claimed"}, headers=acme
    )
    assert [d["owner"] for d in claimed.json()["devices"]] == ["alice"]
    bad_state = await api.get(
        "/v1/models/acme/thermo-1/devices", params={"state": "lost"}, headers=acme
    )
    assert bad_state.status_code == 422 and bad_state.json()["code"] == "malformed"
    assert (await api.get("/v1/models/acme/thermo-1/devices", headers=globex)).status_code == 404

    history = await api.get("/v1/audit", params={"identifier": MAC}, headers=acme)
    actions = [(e["action"], e["code"]) for e in history.json()["entries"]]
    assert actions[:2] == [("reenable", "ok"), ("revoke", "conflict")]
    assert actions[2:4] == [("revoke", "ok"), ("claim", "ok")]
    assert all(e["vendor"] == "acme" for e in history.json()["entries"])
    assert [e["actor"].split(":")[:3] for e in history.json()["entries"][:2]] == [
        ["api", "vendor", "acme"],
        ["api", "vendor", "acme"],
    ]
    # Globex sees none of acme's history, and may not ask for it by name.
    assert (await api.get("/v1/audit", headers=globex)).json() == {"entries": []}
    named = await api.get("/v1/audit", params={"vendor": "acme"}, headers=globex)
    assert named.status_code == 403


@pytest.mark.usefixtures("acme")
async def test_vendor_unapproves_and_bulk_approves(admin: Admin, api: httpx.AsyncClient) -> None:
    acme = await bearer(admin, "vendor", "acme")
    globex = await bearer(admin, "vendor", "globex")

    bulk = await api.post(
        "/v1/models/acme/thermo-1/approvals/bulk",
        json={"rows": ["00:1A:2B:00:00:00..00:1A:2B:00:00:0F", MAC, "not-a-mac"], "dry_run": False},
        headers=acme,
    )
    assert bulk.status_code == 200, bulk.text
    report = bulk.json()
    assert (report["added"], report["already"], report["dry_run"]) == (16, 1, False)
    assert [(r["row"], r["text"]) for r in report["refused"]] == [(3, "not-a-mac")]
    foreign = await api.post(
        "/v1/models/acme/thermo-1/approvals/bulk", json={"rows": [MAC]}, headers=globex
    )
    assert foreign.status_code == 404

    in_use = await api.post(
        "/v1/models/acme/thermo-1/unapprove", json={"identifiers": [MAC]}, headers=acme
    )
    assert in_use.status_code == 409 and in_use.json()["code"] == "conflict"
    assert "alice" in in_use.json()["message"]
    removed = await api.post(
        "/v1/models/acme/thermo-1/unapprove",
        json={"identifiers": ["00:1A:2B:00:00:00", "00:1A:2B:00:00:99"]},
        headers=acme,
    )
    assert removed.json() == {"removed": ["00:1A:2B:00:00:00"], "missing": ["00:1A:2B:00:00:99"]}
    assert (
        await api.post(
            "/v1/models/acme/thermo-1/unapprove", json={"identifiers": [MAC]}, headers=globex
        )
    ).status_code == 404


@pytest.mark.usefixtures("acme")
async def test_only_an_administrator_transfers(admin: Admin, api: httpx.AsyncClient) -> None:
    administrator = await bearer(admin, "admin")
    for who in (await bearer(admin, "vendor", "acme"), await bearer(admin, "owner", "alice")):
        refused = await api.post(f"{DEVICE}/transfer", json={"to": "bob"}, headers=who)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"

    moved = await api.post(f"{DEVICE}/transfer", json={"to": "bob"}, headers=administrator)
    assert moved.status_code == 200
    assert moved.json()["message"] == (
        f"The MAC address {MAC} (acme/thermo-1) now belongs to bob (it was alice's); "
        "its old key was revoked and it activates again for a new one."
    )
    assert (await admin.show("acme", "thermo-1", MAC)).owner == "bob"
    again = await api.post(f"{DEVICE}/transfer", json={"to": "bob"}, headers=administrator)
    assert again.status_code == 409
    unclaimed = await api.post(
        "/v1/devices/acme/thermo-1/00:1A:2B:3C:4D:5F/transfer",
        json={"to": "bob"},
        headers=administrator,
    )
    assert unclaimed.status_code == 409 and unclaimed.json()["code"] == "not_claimed"


async def test_not_owner_from_a_race_is_403(admin: Admin, api: httpx.AsyncClient) -> None:
    # The status table's not_owner: the CLI's refusal, mapped as the API maps it.
    from bridge.web.refusals import STATUS  # noqa: PLC0415

    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    with pytest.raises(NotOwner):
        await admin.release("acme", "thermo-1", MAC, owner="bob")
    assert STATUS[NotOwner.code] == 403


async def test_audit_since_takes_naive_and_aware_times(
    admin: Admin, api: httpx.AsyncClient
) -> None:
    administrator = await bearer(admin, "admin")
    for since in (
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59Z",
    ):
        answer = await api.get("/v1/audit", params={"since": since}, headers=administrator)
        assert answer.status_code == 200, (since, answer.text)
    for since in ("yesterday", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"):
        answer = await api.get("/v1/audit", params={"since": since}, headers=administrator)
        assert answer.status_code == 422, (since, answer.text)
        assert answer.json()["code"] == "malformed"
    assert (
        await api.get("/v1/audit", params={"since": "yesterday"}, headers=administrator)
    ).status_code == 422
