"""The HTTP API on a real PostgreSQL: tokens, the owner and vendor boundaries, the
CLI's codes and sentences as JSON, and the per-token claim throttle."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.errors import ClaimedByOther, InvalidIdentifier
from bridge.store import Store
from bridge.tokens import create_token, revoke_token
from bridge.web.app import create_app
from tests.helpers import bearer, token_secret
from tests.services import free_port

MAC = "00:1A:2B:3C:4D:5E"


def _client(store: Store, settings: Settings) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(store, settings))
    return httpx.AsyncClient(transport=transport, base_url="http://bridge.test")


@pytest.fixture
async def api(admin: Admin, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(admin.store, settings) as client:
        yield client


async def _acme_model(api: httpx.AsyncClient, vendor: dict[str, str]) -> None:
    made = await api.post(
        "/v1/models",
        json={"model": "thermo-1", "kind": "mac", "window_seconds": 3600},
        headers=vendor,
    )
    assert made.status_code == 201, made.text
    assert made.json()["vendor"] == "acme"
    approved = await api.post(
        "/v1/models/acme/thermo-1/approvals",
        json={"identifiers": [MAC, "00:1A:2B:3C:4D:5F", "00:1A:2B:3C:4D:60"]},
        headers=vendor,
    )
    assert approved.json() == {"added": 3, "already": 0}


async def test_tokens_are_required_stored_hashed_and_revocable(
    admin: Admin, api: httpx.AsyncClient, database_url: str
) -> None:
    missing = await api.get("/v1/me")
    assert missing.status_code == 401
    assert missing.json()["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    made_up = await api.get(
        "/v1/me", headers={"Authorization": "Bearer bt_0123456789ab_" + "x" * 43}
    )
    assert made_up.status_code == 401

    issued = await create_token(admin.store, "owner", "alice", actor="test")
    headers = {"Authorization": f"Bearer {issued.token}"}
    me = await api.get("/v1/me", headers=headers)
    assert me.json() == {"token_id": issued.record.id, "role": "owner", "subject": "alice"}

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM api_tokens WHERE id = $1", issued.record.id)
        audit = await conn.fetch("SELECT * FROM audit_log")
    finally:
        await conn.close()
    assert row is not None
    assert bytes(row["token_hash"]) == hashlib.sha256(issued.token.encode()).digest()
    secret_part = token_secret(issued.token)
    assert all(secret_part not in str(v) for v in row.values())
    assert all(secret_part not in str(dict(r)) for r in audit)
    assert secret_part not in repr(issued)

    await revoke_token(admin.store, issued.record.id, actor="test")
    revoked = await api.get("/v1/me", headers=headers)
    assert revoked.status_code == 401
    assert revoked.json()["message"] == "This API token is not valid (unknown or revoked)."


async def test_owner_claims_lists_and_shows_only_their_own_devices(
    admin: Admin, api: httpx.AsyncClient
) -> None:
    vendor = await bearer(admin, "vendor", "acme")
    alice = await bearer(admin, "owner", "alice")
    bob = await bearer(admin, "owner", "bob")
    await _acme_model(api, vendor)

    claimed = await api.post(
        "/v1/claims",
        json={"vendor": "acme", "model": "thermo-1", "identifier": "001a.2b3c.4d5e"},
        headers=alice,
    )
    assert claimed.status_code == 200, claimed.text
    body = claimed.json()
    assert body["device"]["identifier"] == MAC and body["device"]["state"] == "claimed"
    assert 3590 <= body["device"]["window_seconds_left"] <= 3600
    assert "is now in your account" in body["message"]
    again = await api.post(
        "/v1/claims",
        json={"vendor": "acme", "model": "thermo-1", "identifier": MAC},
        headers=alice,
    )
    assert again.json()["already_yours"] is True

    mine = (await api.get("/v1/devices", headers=alice)).json()["devices"]
    assert [d["identifier"] for d in mine] == [MAC]
    assert (await api.get("/v1/devices", headers=bob)).json() == {"devices": []}

    shown = await api.get(f"/v1/devices/acme/thermo-1/{MAC}", headers=alice)
    assert shown.status_code == 200 and shown.json()["owner"] == "alice"

    # Bob asks for Alice's device: 404, and the answer names nobody.
    other = await api.get(f"/v1/devices/acme/thermo-1/{MAC}", headers=bob)
    assert other.status_code == 404
    assert other.json()["code"] == "not_found"
    assert "alice" not in other.text
    # ... exactly as for an approved device nobody holds, and for a number never approved.
    free = await api.get("/v1/devices/acme/thermo-1/00:1A:2B:3C:4D:5F", headers=bob)
    unknown = await api.get("/v1/devices/acme/thermo-1/00:1A:2B:3C:4D:99", headers=bob)
    for answer, number in ((free, "00:1A:2B:3C:4D:5F"), (unknown, "00:1A:2B:3C:4D:99")):
        assert answer.status_code == 404
        assert answer.json() == {
            "code": "not_found",
            "message": f"There is no MAC address {number} of acme/thermo-1 in your account.",
        }

    # A claim of Alice's device by Bob is the CLI's claimed_by_other, as JSON.
    taken = await api.post(
        "/v1/claims", json={"vendor": "acme", "model": "thermo-1", "identifier": MAC}, headers=bob
    )
    assert taken.status_code == 409
    with pytest.raises(ClaimedByOther) as cli:
        await admin.claim("acme", "thermo-1", MAC, owner="bob")
    assert taken.json() == {"code": "claimed_by_other", "message": cli.value.message}


async def test_vendor_manages_only_its_own_models(admin: Admin, api: httpx.AsyncClient) -> None:
    acme = await bearer(admin, "vendor", "acme")
    globex = await bearer(admin, "vendor", "globex")
    alice = await bearer(admin, "owner", "alice")
    await _acme_model(api, acme)

    # Globex approving on acme's model is answered as if the model did not exist.
    foreign = await api.post(
        "/v1/models/acme/thermo-1/approvals",
        json={"identifiers": ["00:00:00:00:00:01"]},
        headers=globex,
    )
    missing = await api.post(
        "/v1/models/acme/nope/approvals", json={"identifiers": ["00:00:00:00:00:01"]}, headers=acme
    )
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["code"] == missing.json()["code"] == "unknown_model"
    assert foreign.json()["message"] == missing.json()["message"].replace("nope", "thermo-1")
    assert (await api.get("/v1/models/acme/thermo-1", headers=globex)).status_code == 404
    assert (await api.get(f"/v1/devices/acme/thermo-1/{MAC}", headers=globex)).status_code == 404
    assert (await api.get(f"/v1/devices/acme/thermo-1/{MAC}", headers=acme)).status_code == 200
    assert await admin.store.lookalikes(await admin.model("acme", "thermo-1"), "000000000001") == []

    as_acme = await api.post(
        "/v1/models", json={"vendor": "acme", "model": "x", "kind": "mac"}, headers=globex
    )
    assert as_acme.status_code == 403 and as_acme.json()["code"] == "forbidden"
    by_owner = await api.post(
        "/v1/models/acme/thermo-1/approvals", json={"identifiers": [MAC]}, headers=alice
    )
    assert by_owner.status_code == 403 and by_owner.json()["code"] == "forbidden"
    vendor_claims = await api.post(
        "/v1/claims", json={"vendor": "acme", "model": "thermo-1", "identifier": MAC}, headers=acme
    )
    assert vendor_claims.status_code == 403

    admin_token = await bearer(admin, "admin")
    made = await api.post(
        "/v1/models",
        json={"vendor": "globex", "model": "cam", "kind": "serial"},
        headers=admin_token,
    )
    assert made.status_code == 201 and made.json()["vendor"] == "globex"
    duplicate = await api.post(
        "/v1/models",
        json={"vendor": "globex", "model": "cam", "kind": "serial"},
        headers=admin_token,
    )
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "conflict"


async def test_claim_errors_carry_the_cli_sentence_and_the_suggestion(
    admin: Admin, api: httpx.AsyncClient
) -> None:
    await _acme_model(api, await bearer(admin, "vendor", "acme"))
    alice = await bearer(admin, "owner", "alice")
    typo = "00:1A:2B:3C:4D:6O"  # letter O for zero
    answer = await api.post(
        "/v1/claims",
        json={"vendor": "acme", "model": "thermo-1", "identifier": typo},
        headers=alice,
    )
    with pytest.raises(InvalidIdentifier) as cli:
        await admin.claim("acme", "thermo-1", typo, owner="alice")
    assert answer.status_code == 422
    assert answer.json() == {
        "code": "invalid_identifier",
        "message": cli.value.message,
        "suggestion": "00:1A:2B:3C:4D:60",
    }
    assert "did you mean 00:1A:2B:3C:4D:60?" in cli.value.message

    not_approved = await api.post(
        "/v1/claims",
        json={"vendor": "acme", "model": "thermo-1", "identifier": "OO:1A:2B:3C:4D:5E"},
        headers=alice,
    )
    assert not_approved.status_code == 422  # O is not a hex digit: invalid, with the suggestion
    assert not_approved.json()["suggestion"] == MAC
    unknown = await api.post(
        "/v1/claims", json={"vendor": "acme", "model": "nope", "identifier": MAC}, headers=alice
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_model"
    absent = await api.post(
        "/v1/claims",
        json={"vendor": "acme", "model": "thermo-1", "identifier": "00:1A:2B:3C:4D:99"},
        headers=alice,
    )
    assert absent.status_code == 404 and absent.json()["code"] == "not_approved"
    assert "suggestion" not in absent.json()


async def test_bad_requests_are_malformed_never_a_server_error(
    admin: Admin, api: httpx.AsyncClient
) -> None:
    alice = await bearer(admin, "owner", "alice")
    for body in (
        {"vendor": "ac\x00me", "model": "m", "identifier": "1"},
        {"vendor": "acme", "model": "m"},
        {"vendor": "acme", "model": "m", "identifier": "1", "extra": 1},
        {"vendor": "a" * 65, "model": "m", "identifier": "1"},
    ):
        answer = await api.post("/v1/claims", json=body, headers=alice)
        assert answer.status_code == 422, body
        assert answer.json()["code"] == "malformed"
        assert answer.json()["message"].startswith("The field ")
    nul = await api.get("/v1/devices/acme/thermo-1/AB%00CD", headers=alice)
    assert nul.status_code == 422
    nowhere = await api.get("/v1/nowhere", headers=alice)
    assert nowhere.status_code == 404 and nowhere.json()["code"] == "not_found"


async def test_failed_claims_are_throttled_per_token_across_processes(
    admin: Admin, settings: Settings
) -> None:
    strict = settings.model_copy(update={"api_claim_failures": 3, "api_claim_window_seconds": 60})
    assert strict.database_url is not None
    vendor = await bearer(admin, "vendor", "acme")
    alice = await bearer(admin, "owner", "alice")
    alice_phone = await bearer(admin, "owner", "alice")
    async with (
        _client(admin.store, strict) as one,
        Store.open(strict.database_url.get_secret_value(), pool_size=2) as other_store,
        _client(other_store, strict) as two,  # a second API process: its own pool
    ):
        await _acme_model(one, vendor)

        def claim(number: str) -> dict[str, object]:
            return {"vendor": "acme", "model": "thermo-1", "identifier": number}

        # A success does not count: only failures are throttled.
        assert (await one.post("/v1/claims", json=claim(MAC), headers=alice)).status_code == 200
        for api, number in ((one, "00:1A:2B:3C:4D:90"), (two, "00:1A:2B:3C:4D:91")):
            assert (
                await api.post("/v1/claims", json=claim(number), headers=alice)
            ).status_code == 404
        assert (await two.post("/v1/claims", json=claim(MAC), headers=alice)).status_code == 200
        third = await two.post("/v1/claims", json=claim("00:1A:2B:3C:4D:92"), headers=alice)
        assert third.status_code == 404

        limited = await one.post("/v1/claims", json=claim("00:1A:2B:3C:4D:5F"), headers=alice)
        assert limited.status_code == 429
        body = limited.json()
        assert body["code"] == "rate_limited"
        assert 1 <= body["retry_after"] <= 60
        assert limited.headers["retry-after"] == str(body["retry_after"])
        # Even a correct number waits: the limit holds before the database is asked.
        assert "suggestion" not in body
        # Another token is counted on its own.
        other = await two.post("/v1/claims", json=claim("00:1A:2B:3C:4D:5F"), headers=alice_phone)
        assert other.status_code == 200


async def test_unreachable_database_is_503_with_retry_after(settings: Settings) -> None:
    dead = f"postgresql://bridge@127.0.0.1:{free_port()}/bridge"
    async with Store.open(dead, eager=False) as store, _client(store, settings) as api:
        answer = await api.get(
            "/v1/me", headers={"Authorization": "Bearer bt_0123456789ab_" + "x" * 43}
        )
    assert answer.status_code == 503
    assert answer.json()["code"] == "unavailable"
    assert answer.headers["retry-after"] == str(answer.json()["retry_after"])


async def test_openapi_document_and_owner_page(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    assert {"/v1/claims", "/v1/devices", "/v1/models"} <= set(document["paths"])
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    page = await api.get("/")
    assert page.status_code == 200
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert (await api.get(asset)).status_code == 200
