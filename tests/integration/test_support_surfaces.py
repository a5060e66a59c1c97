"""The support desk's surfaces on a real PostgreSQL: `bridge diagnose` / `resolve` /
`model contact` as processes, and the HTTP routes within each token's boundary, with
the attacks an owner could try to learn who else holds a claim."""

from __future__ import annotations

import json

import httpx
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from tests.helpers import bearer
from tests.integration.test_cli import _env, bridge_cli

MAC = "00:1A:2B:3C:4D:5E"
PATH = "/v1/diagnose/acme/thermo-1/001a.2b3c.4d5e"


@pytest.fixture
async def held_by_bob(admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.add_model("other", "cam-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC, "00:1A:2B:3C:4D:5F"])
    await admin.claim("acme", "thermo-1", MAC, owner="bob")


async def test_cli_diagnose_resolve_and_contact(settings: Settings, held_by_bob: None) -> None:
    env = _env(settings)
    run = await bridge_cli(env, "model", "contact", "acme", "thermo-1", "support@acme.example")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "acme/thermo-1 support contact: support@acme.example"

    run = await bridge_cli(env, "diagnose", "acme", "thermo-1", "001A2B3C4D5E", "--asking", "alice")
    assert run.returncode == 0, run.stderr
    assert "verdict:    claimed_by_other (cause 2)" in run.stdout
    assert "It is claimed by bob since" in run.stdout
    assert "support:    support@acme.example" in run.stdout
    assert "resolve:    bridge resolve {release,transfer} ..." in run.stdout

    run = await bridge_cli(env, "diagnose", "acme", "thermo-1", "00-1a-2b-3c-4d-5e", "--json")
    body = json.loads(run.stdout)
    assert (body["verdict"], body["cause"], body["identifier"]) == ("never_tried", None, MAC)
    assert [e["action"] for e in body["timeline"]] == ["approve", "claim"]

    run = await bridge_cli(env, "resolve", "release", "acme", "thermo-1", MAC)
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "error: malformed: A support release needs a reason, recorded in the audit log."
    )
    run = await bridge_cli(
        env, "resolve", "release", "acme", "thermo-1", MAC, "--reason", "sold to alice"
    )
    assert run.returncode == 0, run.stderr
    assert "was released from bob's account" in run.stdout

    run = await bridge_cli(env, "diagnose", "acme", "thermo-1", "00:1A:2B:3C:4D:5G")
    assert run.returncode == 0, run.stderr
    assert "verdict:    typo (cause 1)" in run.stdout


async def test_http_vendor_diagnoses_and_releases_with_a_reason_the_owner_then_reads(
    admin: Admin, api: httpx.AsyncClient, held_by_bob: None
) -> None:
    vendor = await bearer(admin, "vendor", "acme")
    bob = await bearer(admin, "owner", "bob")
    answer = await api.put(
        "/v1/models/acme/thermo-1/support-contact",
        json={"support_contact": "support@acme.example"},
        headers=vendor,
    )
    assert answer.status_code == 200, answer.text

    answer = await api.get(PATH, params={"asking": "alice"}, headers=vendor)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["verdict"], body["cause"], body["device"]["owner"]) == (
        "claimed_by_other",
        2,
        "bob",
    )
    assert body["support_contact"] == "support@acme.example"

    answer = await api.post(
        f"{PATH}/resolve",
        json={"action": "release", "reason": "bob sold it to alice"},
        headers=vendor,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["diagnosis"]["verdict"] == "not_claimed"
    history = (await api.get("/v1/history", headers=bob)).json()["entries"]
    assert (history[0]["action"], history[0]["by"], history[0]["reason"]) == (
        "release",
        "the vendor",
        "bob sold it to alice",
    )
    # Any token reads a model's contact (the owner page shows it beside a refusal).
    contact = await api.get("/v1/models/acme/thermo-1/support-contact", headers=bob)
    assert contact.json()["support_contact"] == "support@acme.example"


async def test_attack_owner_cannot_learn_who_holds_a_claim(
    admin: Admin, api: httpx.AsyncClient, held_by_bob: None
) -> None:
    alice = await bearer(admin, "owner", "alice")
    # Never claimed by alice: answered exactly like a device that does not exist.
    held = await api.get(PATH, headers=alice)
    free = await api.get("/v1/diagnose/acme/thermo-1/00:1A:2B:3C:4D:5F", headers=alice)
    missing = await api.get("/v1/diagnose/acme/thermo-1/00:1A:2B:3C:4D:99", headers=alice)
    assert held.status_code == free.status_code == missing.status_code == 404
    assert held.json() == {
        "code": "not_found",
        "message": "There is no MAC address 00:1A:2B:3C:4D:5E of acme/thermo-1 in your account.",
    }
    assert "bob" not in held.text
    # `asking` changes nothing for an owner, nor may an owner resolve.
    assert (await api.get(PATH, params={"asking": "alice"}, headers=alice)).status_code == 404
    act = await api.post(
        f"{PATH}/resolve", json={"action": "release", "reason": "mine"}, headers=alice
    )
    assert act.status_code == 403

    # Bob held it, then support moved it to carol: bob may still diagnose it (his
    # history), and learns neither carol's name nor anything of her claim.
    await admin.resolve("acme", "thermo-1", MAC, "transfer", to="carol", reason="resale")
    bob = await bearer(admin, "owner", "bob")
    gone = await api.get(PATH, headers=bob)
    assert gone.status_code == 200, gone.text
    assert "carol" not in gone.text
    body = gone.json()
    assert body["summary"] == (
        "The MAC address 00:1A:2B:3C:4D:5E (acme/thermo-1) is no longer in your account."
    )
    assert body["device"] is None
    assert {e["owner"] for e in body["timeline"]} == {"bob", None}
    assert body["evidence"] == [
        body["evidence"][0].split(" (")[0] + " (transfer, by the vendor): resale."
    ]
    assert "test" not in {e["actor"] for e in body["timeline"]}  # actors are redacted
    # Carol, the holder now, does not learn bob's name from the transfer entry.
    carol = await bearer(admin, "owner", "carol")
    mine = await api.get(PATH, headers=carol)
    assert mine.status_code == 200, mine.text
    assert "bob" not in mine.text
    assert mine.json()["verdict"] == "never_tried"


async def test_attack_vendor_diagnoses_only_its_own_models(
    admin: Admin, api: httpx.AsyncClient, held_by_bob: None
) -> None:
    other = await bearer(admin, "vendor", "other")
    answer = await api.get(PATH, headers=other)
    assert answer.status_code == 404
    assert answer.json()["code"] == "unknown_model"
    assert "bob" not in answer.text
    act = await api.post(
        f"{PATH}/resolve", json={"action": "release", "reason": "x"}, headers=other
    )
    assert act.status_code == 404
    assert (await admin.show("acme", "thermo-1", MAC)).owner == "bob"
    put = await api.put(
        "/v1/models/acme/thermo-1/support-contact",
        json={"support_contact": "evil@example"},
        headers=other,
    )
    assert put.status_code == 404
    # Control characters in a reason are refused before the database.
    vendor = await bearer(admin, "vendor", "acme")
    bad = await api.post(
        f"{PATH}/resolve", json={"action": "release", "reason": "a\x00b"}, headers=vendor
    )
    assert bad.status_code == 422
    assert (await admin.show("acme", "thermo-1", MAC)).owner == "bob"


async def test_a_refused_claim_carries_the_models_support_contact(
    admin: Admin, api: httpx.AsyncClient, settings: Settings, held_by_bob: None
) -> None:
    # Before a contact is set, a refusal names none.
    alice = await bearer(admin, "owner", "alice")
    claim = {"vendor": "acme", "model": "thermo-1", "identifier": MAC}
    answer = await api.post("/v1/claims", json=claim, headers=alice)
    assert answer.status_code == 409
    assert "support_contact" not in answer.json()

    env = _env(settings)
    run = await bridge_cli(env, "model", "contact", "acme", "thermo-1", "support@acme.example")
    assert run.returncode == 0, run.stderr

    # HTTP: claimed by another account, and a number not approved.
    answer = await api.post("/v1/claims", json=claim, headers=alice)
    assert (answer.status_code, answer.json()["code"]) == (409, "claimed_by_other")
    assert answer.json()["support_contact"] == "support@acme.example"
    unknown = {**claim, "identifier": "00:1A:2B:3C:4D:99"}
    answer = await api.post("/v1/claims", json=unknown, headers=alice)
    assert answer.json()["code"] == "not_approved"
    assert answer.json()["support_contact"] == "support@acme.example"

    # The command line: the refusal sentence, then whom to ask.
    run = await bridge_cli(env, "claim", "acme", "thermo-1", MAC, "--owner", "alice")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("error: claimed_by_other: ")
    assert lines[1] == "support: support@acme.example"
