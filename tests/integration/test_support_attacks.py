"""Attacks on the support desk (issue 18) by an owner, against a real PostgreSQL,
broker and bridge: what an owner's diagnosis must not tell about other accounts."""

from __future__ import annotations

import re

import httpx
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.db import diagnosis as queries
from tests.helpers import RunningBridge, activate, bearer

MAC_A = "02:00:00:00:07:0A"  # alice's
MAC_B = "02:00:00:00:07:0B"  # bob's: one character away from alice's


async def test_attack_owner_learns_a_neighbours_claim_from_attempts_elsewhere(
    admin: Admin, settings: Settings, bridge: RunningBridge, api: httpx.AsyncClient
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC_A, MAC_B])
    await admin.claim("acme", "thermo-1", MAC_A, owner="alice")
    await admin.claim("acme", "thermo-1", MAC_B, owner="bob")
    # Bob's device activates, inside alice's window: its number is one slip from hers.
    done = await activate(settings, MAC_B, client_id="bobs-thermo")
    assert done.ok, done.reply

    alice = await bearer(admin, "owner", "alice")
    answer = await api.get(f"/v1/diagnose/acme/thermo-1/{MAC_A}", headers=alice)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # Nothing says that 02:00:00:00:07:0B is approved, claimed or activated: that is
    # bob's device, not an attempt of alice's.
    assert "07:0B" not in answer.text.upper().replace("-", ":"), body["attempts_elsewhere"]
    assert "0B" not in {a["presented"][-2:].upper() for a in body["attempts_elsewhere"]}
    assert all(a["code"] != "ok" for a in body["attempts_elsewhere"])


async def test_attack_owner_diagnosis_of_a_foreign_number_searches_nothing(
    admin: Admin, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    for i in range(3):
        await admin.add_model("acme", f"other-{i}", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC_B])
    await admin.claim("acme", "thermo-1", MAC_B, owner="bob")
    searched: list[str] = []
    for name in ("approved_among", "around", "vendor_models", "window_attempts", "timeline"):
        real = getattr(queries, name)

        async def spy(*args: object, _real: object = real, _name: str = name) -> object:
            searched.append(_name)
            return await _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(queries, name, spy)
    alice = await bearer(admin, "owner", "alice")
    for number in (MAC_B, MAC_A, "not-a-mac"):
        answer = await api.get(f"/v1/diagnose/acme/thermo-1/{number}", headers=alice)
        assert answer.status_code in (404, 422), answer.text
    # An owner's question about a number that was never theirs is answered before
    # the neighbour search, the range scans and the vendor's other models are read:
    # the same cost (and time) whether the number is claimed, free or unknown.
    assert searched == []


async def test_attack_new_owner_learns_the_previous_owners_client_id(
    admin: Admin, settings: Settings, bridge: RunningBridge, api: httpx.AsyncClient
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC_A])
    await admin.claim("acme", "thermo-1", MAC_A, owner="bob")
    done = await activate(settings, MAC_A, client_id="bobs-flat-3b-kitchen")
    assert done.ok, done.reply
    await admin.resolve("acme", "thermo-1", MAC_A, "transfer", to="carol", reason="resale")

    carol = await bearer(admin, "owner", "carol")
    answer = await api.get(f"/v1/diagnose/acme/thermo-1/{MAC_A}", headers=carol)
    assert answer.status_code == 200, answer.text
    # The client id is bob's device's name, from his activation: not carol's to read.
    assert "bobs-flat-3b-kitchen" not in answer.text
    assert answer.json()["device"]["client_id"] is None


async def test_attack_vendor_reads_another_vendors_model_through_its_contact(
    admin: Admin, api: httpx.AsyncClient
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    path = "/v1/models/acme/thermo-1/support-contact"
    vendor = await bearer(admin, "vendor", "acme")
    assert (
        await api.put(path, json={"support_contact": "help@acme.example"}, headers=vendor)
    ).status_code == 200
    other = await bearer(admin, "vendor", "other")
    registered = await api.get(path, headers=other)
    unknown = await api.get("/v1/models/acme/nothing-1/support-contact", headers=other)
    # Another vendor's model is answered like an unregistered one, as everywhere.
    assert registered.status_code == unknown.status_code == 404, registered.text
    assert registered.json()["code"] == "unknown_model"
    assert "help@acme" not in registered.text
    # Owners read it (it is shown beside their refused claims), and the vendor itself.
    owner = await bearer(admin, "owner", "alice")
    for token in (owner, vendor, await bearer(admin, "admin")):
        shown = await api.get(path, headers=token)
        assert shown.json()["support_contact"] == "help@acme.example", shown.text


async def test_attack_vendor_transfers_to_a_name_that_displays_as_another(
    admin: Admin, api: httpx.AsyncClient
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC_A])
    await admin.claim("acme", "thermo-1", MAC_A, owner="bob")
    vendor = await bearer(admin, "vendor", "acme")
    # A right-to-left override: "\u202eecila" displays as "alice" in the audit log and on
    # the support page; a zero-width space or a trailing space makes a second "alice".
    for to in ("\u202eecila", "alice\u200b", "alice ", " alice"):
        answer = await api.post(
            f"/v1/diagnose/acme/thermo-1/{MAC_A}/resolve",
            json={"action": "transfer", "to": to, "reason": "resale"},
            headers=vendor,
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "malformed"
    assert (await admin.show("acme", "thermo-1", MAC_A)).owner == "bob"


async def test_support_routes_read_no_body_before_the_token_and_pages_carry_headers(
    settings: Settings,
) -> None:
    from tests.helpers import api_server  # noqa: PLC0415 (a process of its own)
    from tests.integration.test_api_limits import (  # noqa: PLC0415
        COMMON,
        LIMIT,
        PAGE_POLICY,
        _open,
        _read_answer,
    )

    with api_server(settings) as server:
        for method, path in (
            ("POST", f"/v1/diagnose/acme/thermo-1/{MAC_A}/resolve"),
            ("PUT", "/v1/models/acme/thermo-1/support-contact"),
        ):
            reader, writer = await _open(server)
            try:
                writer.write(
                    f"{method} {path} HTTP/1.1\r\nHost: bridge.test\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {LIMIT}\r\n\r\n".encode()
                )
                await writer.drain()
                answer = await _read_answer(reader)  # the body was never sent
            finally:
                writer.close()
            assert answer.status == 401, (path, answer.status)
        async with httpx.AsyncClient(base_url=server.url) as http:
            for page in ("support.html", "support.js", "owner-support.js", "support.css"):
                shown = await http.get(f"/static/{page}")
                assert shown.status_code == 200, page
                assert shown.headers["content-security-policy"] == PAGE_POLICY, page
                for header, value in COMMON.items():
                    assert shown.headers.get(header) == value, (page, header)
            # Nothing under /static/ runs inline script: the policy would block it anyway.
            html = (await http.get("/static/support.html")).text
            assert re.findall(r"<script\b[^>]*>", html) == [
                '<script src="/static/support.js" defer>'
            ]
            assert not re.search(r"\son[a-z]+\s*=", html)  # no inline handlers


async def test_attack_owner_reads_what_another_accounts_device_sent(
    admin: Admin, settings: Settings, bridge: RunningBridge, api: httpx.AsyncClient
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC_A, MAC_B])
    await admin.claim("acme", "thermo-1", MAC_A, owner="alice")
    await admin.claim("acme", "thermo-1", MAC_B, owner="bob")
    # Bob's device, with broken firmware, sends its IMEI and then its serial number.
    for sent in ("490154203237518", "SN-BOB-000123"):
        tried = await activate(settings, sent, client_id="bobs-thermo")
        assert not tried.ok, tried.reply

    alice = await bearer(admin, "owner", "alice")
    answer = await api.get(f"/v1/diagnose/acme/thermo-1/{MAC_A}", headers=alice)
    assert answer.status_code == 200, answer.text
    # Nothing ties those attempts to alice's device but the model and the time: they
    # may be anyone's, and what they carried is not hers to read.
    assert "490154203237518" not in answer.text
    assert "SN-BOB" not in answer.text
    # The vendor's support still sees them (tallied in one row), as possible evidence.
    vendor = await bearer(admin, "vendor", "acme")
    seen = await api.get(f"/v1/diagnose/acme/thermo-1/{MAC_A}", headers=vendor)
    assert "490154203237518" in seen.text
