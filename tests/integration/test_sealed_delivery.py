"""Keys travel sealed unless the model's vendor chose plaintext delivery.

Real Mosquitto, real PostgreSQL, the bridge in the test's loop.
"""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge.admin import Admin
from bridge.config import Settings
from tests.helpers import RunningBridge, activate, raw_exchange

MAC = "00:1A:2B:3C:4D:5E"


async def _claimed(admin: Admin, *, plaintext_keys: bool = False) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac", plaintext_keys=plaintext_keys)
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")


def _request(request_id: str, *, public_key: bytes | None = None) -> bytes:
    body = {
        "v": 1,
        "request_id": request_id,
        "vendor": "acme",
        "model": "thermo-1",
        "identifier": MAC,
    }
    if public_key is not None:
        body["public_key"] = base64.b64encode(public_key).decode()
    return json.dumps(body).encode()


async def test_attack_plaintext_request_to_a_sealed_model_gets_seal_required(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    """A request that would put the key on the wire in the clear is refused, not counted."""
    await _claimed(admin)
    for n in range(settings.rate_limit_failures + 2):
        reply = await raw_exchange(settings, _request(f"plain-{n}"), client_id="dev-1")
        assert reply["code"] == "seal_required", reply
        assert reply["message"] == (
            "The model acme/thermo-1 delivers keys only sealed: the request must carry "
            "'public_key', the standard base64 of the device's X25519 public key."
        )
        assert "key" not in reply and "sealed_key" not in reply
    assert (await admin.show("acme", "thermo-1", MAC)).state == "claimed"
    entries = await admin.audit(client_id="dev-1", code="seal_required")
    # Repeated device failures are one tallied entry with a count (schemas/008).
    assert sum(e.count for e in entries) == settings.rate_limit_failures + 2
    assert all(e.identifier == "001A2B3C4D5E" for e in entries)
    # Not a guess: the same client id, now sealing, is not rate limited.
    result = await activate(settings, MAC, client_id="dev-1")
    assert result.ok, result.reply
    assert "sealed_key" in result.reply and "key" not in result.reply


async def test_plaintext_delivery_only_for_a_model_whose_vendor_chose_it(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _claimed(admin, plaintext_keys=True)
    model = await admin.model("acme", "thermo-1")
    assert model.plaintext_keys
    reply = await raw_exchange(settings, _request("plain-1"), client_id="legacy-1")
    assert reply["status"] == "ok" and len(reply["key"]) == 40
    assert await admin.verify_key("acme", "thermo-1", MAC, reply["key"])


async def test_attack_takeover_of_an_activated_devices_client_id_does_not_yield_its_key(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    """Client ids are not secrets: whoever connects with one reads its reply topic.

    The attacker knows the device's client id and request id (say, from a firmware
    log) and replays the request within the grace period: the stored reply comes back,
    sealed to the device's key pair, which the attacker does not have.
    """
    await _claimed(admin)
    device_key = X25519PrivateKey.generate()
    device = await activate(
        settings, MAC, client_id="thermo-42", request_id="boot-1", private_key=device_key
    )
    assert device.ok and device.key is not None
    attacker_key = X25519PrivateKey.generate().public_key().public_bytes_raw()
    replay = await raw_exchange(
        settings, _request("boot-1", public_key=attacker_key), client_id="thermo-42"
    )
    assert replay["status"] == "ok" and "key" not in replay
    assert device.key not in json.dumps(replay)
    stolen = await activate(settings, MAC, client_id="thermo-42", request_id="boot-1")
    assert stolen.ok and stolen.key is None  # sealed to the device, unreadable here
    # Nor does a plaintext replay, or a new request with the attacker's own key.
    plain = await raw_exchange(settings, _request("boot-1"), client_id="thermo-42")
    assert plain["code"] == "seal_required"
    fresh = await activate(settings, MAC, client_id="thermo-42", request_id="boot-2")
    assert fresh.reply["code"] == "already_activated"


async def test_the_api_registers_sealed_models_unless_the_vendor_asks_for_plaintext(
    admin: Admin, settings: Settings
) -> None:
    import httpx  # noqa: PLC0415 (only this test speaks HTTP)

    from bridge.tokens import create_token  # noqa: PLC0415
    from bridge.web.app import create_app  # noqa: PLC0415

    issued = await create_token(admin.store, "vendor", "acme", actor="test")
    headers = {"Authorization": f"Bearer {issued.token}"}
    transport = httpx.ASGITransport(app=create_app(admin.store, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as api:
        sealed = await api.post(
            "/v1/models", json={"model": "thermo-1", "kind": "mac"}, headers=headers
        )
        legacy = await api.post(
            "/v1/models",
            json={"model": "thermo-0", "kind": "mac", "plaintext_keys": True},
            headers=headers,
        )
        shown = await api.get("/v1/models/acme/thermo-0", headers=headers)
    assert sealed.status_code == 201, sealed.text
    assert (sealed.json()["plaintext_keys"], sealed.json()["proof_required"]) == (False, False)
    assert legacy.status_code == 201 and legacy.json()["plaintext_keys"] is True
    assert shown.json()["plaintext_keys"] is True
    assert not (await admin.model("acme", "thermo-1")).plaintext_keys
