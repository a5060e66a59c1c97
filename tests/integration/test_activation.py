"""Activation end to end: the reference client, a real Mosquitto, the bridge, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge.admin import Admin
from bridge.config import Settings
from tests.helpers import RunningBridge, activate, start_bridge

MAC = "00:1A:2B:3C:4D:5E"
KEY_SHAPE = re.compile(r"[0-9a-f]{40}")


async def _mac_model(admin: Admin, *, window: int = 86_400, claim: bool = True) -> None:
    await admin.add_model(
        "acme", "thermo-1", kind="mac", window_seconds=window, claim_required=claim
    )


async def _claimed(admin: Admin, mac: str = MAC, **model: int | bool) -> None:
    await _mac_model(admin, **model)  # type: ignore[arg-type]
    await admin.approve("acme", "thermo-1", [mac])
    await admin.claim("acme", "thermo-1", mac, owner="alice")


async def test_claimed_device_gets_a_key_of_the_contract_shape(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _claimed(admin)
    result = await activate(settings, MAC, request_id="r-1")
    assert result.ok, result.reply
    assert result.reply["identifier"] == "001A2B3C4D5E"
    assert result.reply["request_id"] == "r-1"
    assert result.reply["v"] == 1
    assert result.key is not None and KEY_SHAPE.fullmatch(result.key)
    device = await admin.show("acme", "thermo-1", MAC)
    assert device.state == "activated"
    assert device.activated_at is not None


async def test_same_request_id_gets_the_same_key_and_a_new_one_is_refused(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _claimed(admin)
    device_key = X25519PrivateKey.generate()  # a retrying device keeps its key pair
    first = await activate(
        settings, MAC, client_id="dev-1", request_id="same", private_key=device_key
    )
    again = await activate(
        settings, MAC, client_id="dev-1", request_id="same", private_key=device_key
    )
    assert first.ok and again.ok
    assert first.key == again.key
    other = await activate(settings, MAC, client_id="dev-1", request_id="different")
    assert other.reply["code"] == "already_activated"
    # The same request id from another client is not a replay.
    stranger = await activate(settings, MAC, client_id="dev-2", request_id="same")
    assert stranger.reply["code"] == "already_activated"


async def test_mac_spellings_are_one_device(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _mac_model(admin)
    await admin.approve("acme", "thermo-1", ["00-1a-2b-3c-4d-5e"])
    await admin.claim("acme", "thermo-1", "001a2b3c4d5e", owner="alice")
    result = await activate(settings, "001A.2B3C.4D5E")
    assert result.ok, result.reply
    assert result.reply["identifier"] == "001A2B3C4D5E"


@pytest.mark.parametrize(
    ("setup", "vendor_model", "identifier", "code"),
    [
        ("claimed", ("acme", "nope"), MAC, "unknown_model"),
        ("claimed", ("acme", "thermo-1"), "00:1A:2B:3C:4D", "invalid_identifier"),
        ("claimed", ("acme", "thermo-1"), "00:1A:2B:3C:4D:5F", "not_approved"),
        ("approved", ("acme", "thermo-1"), MAC, "not_claimed"),
    ],
)
async def test_refusals_through_the_broker(
    admin: Admin,
    settings: Settings,
    bridge: RunningBridge,
    setup: str,
    vendor_model: tuple[str, str],
    identifier: str,
    code: str,
) -> None:
    await _mac_model(admin)
    await admin.approve("acme", "thermo-1", [MAC])
    if setup == "claimed":
        await admin.claim("acme", "thermo-1", MAC, owner="alice")
    vendor, model = vendor_model
    result = await activate(settings, identifier, vendor=vendor, model=model, request_id="q")
    assert result.reply["status"] == "error"
    assert result.reply["code"] == code
    assert result.reply["request_id"] == "q"
    message = result.reply["message"]
    assert isinstance(message, str) and message.endswith(".") and "did you mean" not in message
    assert "key" not in result.reply


async def test_no_claim_model_activates_on_approval(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _mac_model(admin, claim=False)
    await admin.approve("acme", "thermo-1", [MAC])
    assert (await activate(settings, MAC)).ok


async def test_a_one_second_window_closes(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _claimed(admin, window=1)
    await asyncio.sleep(1.5)
    result = await activate(settings, MAC)
    assert result.reply["code"] == "window_expired"


async def test_twenty_racing_clients_yield_exactly_one_ok(admin: Admin, settings: Settings) -> None:
    await _claimed(admin)
    # 19 failures on one identifier would cross the default throttle (10): raise it,
    # the race is what this test is about.
    settings = settings.model_copy(
        update={"rate_limit_failures": 100, "rate_limit_identifier_failures": 100}
    )
    running = await start_bridge(settings)
    try:
        results = await asyncio.gather(
            *(activate(settings, MAC, client_id=f"racer-{n}", timeout=20) for n in range(20))
        )
    finally:
        await running.halt()
    codes = sorted(r.reply.get("code", "ok") for r in results)
    assert codes.count("ok") == 1, codes
    assert codes.count("already_activated") == 19, codes
    assert (await admin.show("acme", "thermo-1", MAC)).state == "activated"
