"""A flood of device attempts does not hide a number's history (support desk).

A diagnosis reads a number's audit entries; an attacker who sends a victim's number from
many client ids over several tally windows writes one tallied row per client id, code
and window. Before, the timeline was the number's newest 200 entries, so such a flood
pushed the approval, the claims and support's release out of it: support could not see
who claimed the device, and its previous owner no longer saw why it left their account.
Against a real PostgreSQL, through the bridge's real activation path (Provisioner and
Store, the same SQL functions `serve` calls) and the HTTP API's real app.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from bridge import keys
from bridge.admin import Admin
from bridge.db import diagnosis as queries
from bridge.provisioner import Provisioner
from bridge.records import AuditTally, RateLimit
from bridge.store import Store
from tests.conftest import TEST_SECRET
from tests.helpers import bearer

MAC = "02:00:00:00:0F:01"
#: Client ids the attacker sends from, and tally windows (of one second here) it spans.
CLIENTS = 90
WINDOWS = 3


async def _flood(database_url: str) -> int:
    """The attacker's requests with the victim's number, through the activation path;
    returns how many attempts were made."""
    sent = 0
    async with Store.open(database_url, tally=AuditTally(window_seconds=1)) as store:
        provisioner = Provisioner(
            store,
            keys.KeyHasher(TEST_SECRET.encode()),
            keys.ReplayCipher(TEST_SECRET.encode()),
            limit=RateLimit(failures=100, model_failures=100_000, identifier_failures=100_000),
        )
        for window in range(WINDOWS):
            if window:
                await asyncio.sleep(1.1)  # the next tally window: new rows
            for n in range(CLIENTS):
                request = {
                    "v": 1,
                    "request_id": f"flood-{window}-{n}",
                    "vendor": "acme",
                    "model": "thermo-1",
                    "identifier": MAC,
                }
                reply = await provisioner.activate(f"flood-{n}", json.dumps(request).encode())
                assert reply.code == "seal_required", reply
                sent += 1
    return sent


async def test_attack_flood_of_attempts_does_not_hide_the_claim(
    admin: Admin, database_url: str, api: httpx.AsyncClient
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    vendor = await bearer(admin, "vendor", "acme")
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="carol")
    released = await api.post(
        f"/v1/diagnose/acme/thermo-1/{MAC}/resolve",
        headers=vendor,
        json={"action": "release", "reason": "carol sold it to alice"},
    )
    assert released.status_code == 200, released.text
    await admin.claim("acme", "thermo-1", MAC, owner="alice")

    sent = await _flood(database_url)
    rows = [e for e in await admin.audit(identifier=MAC, limit=10_000) if e.action == "activate"]
    assert len(rows) == CLIENTS * WINDOWS > 200, "the flood must outnumber the old view"
    assert sum(e.count for e in rows) == sent

    # Support, for bob who cannot add the device: still claimed by alice, and the
    # timeline shows how it came to be hers.
    answer = await api.get(
        f"/v1/diagnose/acme/thermo-1/{MAC}", headers=vendor, params={"asking": "bob"}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["verdict"] == "claimed_by_other", body["summary"]
    assert body["evidence"][0].startswith("It is claimed by alice since "), body["evidence"]
    lifecycle = [
        (e["action"], e["code"], e["owner"]) for e in body["timeline"] if e["action"] != "activate"
    ]
    assert lifecycle[:4] == [
        ("approve", "ok", None),
        ("claim", "ok", "carol"),
        ("release", "ok", "carol"),
        ("claim", "ok", "alice"),
    ], lifecycle
    release = next(e for e in body["timeline"] if e["action"] == "release")
    assert release["detail"] == "reason: carol sold it to alice"
    # The attempts stay bounded, and a line says how many older ones are not shown.
    attempts = [e for e in body["timeline"] if e["action"] == "activate"]
    assert len(attempts) == queries.ATTEMPT_LIMIT
    assert {e["code"] for e in attempts} == {"seal_required"}
    older = [e for e in body["timeline"] if e["action"] == "older_attempts"]
    assert len(older) == 1, older
    assert older[0]["count"] == sent - sum(e["count"] for e in attempts)
    assert f"{len(rows) - queries.ATTEMPT_LIMIT} older entries" in older[0]["detail"]

    # The same number without "asking": the device's side, still naming its holder.
    plain = (await api.get(f"/v1/diagnose/acme/thermo-1/{MAC}", headers=vendor)).json()
    assert plain["verdict"] == "device_refused", plain["summary"]
    assert plain["evidence"][0].startswith("It was claimed by alice on "), plain["evidence"]

    # The holder's own view: her claim is in her timeline.
    alice = await bearer(admin, "owner", "alice")
    hers = (await api.get(f"/v1/diagnose/acme/thermo-1/{MAC}", headers=alice)).json()
    assert ("claim", "ok", "alice") in {
        (e["action"], e["code"], e["owner"]) for e in hers["timeline"]
    }, hers["timeline"]

    # The previous owner's view: why it left their account, in the diagnosis and history.
    carol = await bearer(admin, "owner", "carol")
    theirs = (await api.get(f"/v1/diagnose/acme/thermo-1/{MAC}", headers=carol)).json()
    assert theirs["verdict"] == "claimed_by_other"
    assert len(theirs["evidence"]) == 1, theirs
    assert theirs["evidence"][0].startswith("It left your account on "), theirs["evidence"]
    assert theirs["evidence"][0].endswith("(release, by the vendor): carol sold it to alice.")
    history = (await api.get("/v1/history", headers=carol)).json()["entries"]
    assert [(e["action"], e["reason"]) for e in history] == [
        ("release", "carol sold it to alice"),
        ("claim", None),
    ]
