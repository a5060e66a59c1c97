"""Lifecycle changes close the device's broker login whichever entry point makes them.

Revoke, release and transfer through the HTTP API and through the command line (a real
`bridge` process), on a real Mosquitto with the shipped configuration and dynamic
security, and a real PostgreSQL: afterwards the device's old key no longer opens the
broker. And an owner cannot undo a vendor's revoke.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.tokens import Role
from bridge.web.app import create_app
from tests.helpers import activate, bearer
from tests.integration import test_broker_security as secure
from tests.integration.test_cli import _env, bridge_cli
from tests.integration.test_login_namespace import _opens

secure_broker = secure.secure_broker
secure_settings = secure.secure_settings
device_settings = secure.device_settings
secure_bridge = secure.secure_bridge
SecureBroker = secure.SecureBroker

MAC = "00:1A:2B:3C:4D:5E"
DEVICE = f"/v1/devices/acme/thermo-1/{MAC}"


@pytest.fixture
async def api(admin: Admin, secure_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API application on the test's store, with the bridge's settings (as `bridge api`)."""
    transport = httpx.ASGITransport(app=create_app(admin.store, secure_settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as client:
        yield client


async def _activated(
    admin: Admin, broker: SecureBroker, device_settings: Settings, client_id: str
) -> str:
    await admin.add_model("acme", "thermo-1", kind="mac", window_seconds=3600)
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    result = await activate(device_settings, MAC, client_id=client_id, seal=True)
    assert result.ok and result.key, result.reply
    assert await _opens(broker, client_id, result.key, client_id)
    return result.key


@pytest.mark.usefixtures("secure_bridge")
@pytest.mark.parametrize("action", ["revoke", "release", "transfer"])
async def test_attack_old_key_opens_the_broker_after_an_api_lifecycle_change(
    action: str,
    admin: Admin,
    api: httpx.AsyncClient,
    secure_broker: SecureBroker,
    device_settings: Settings,
) -> None:
    """Was: the API built Admin without settings, so revoke and release left the login
    open; transfer left the previous owner's key working everywhere."""
    client_id = f"api-{action}"
    key = await _activated(admin, secure_broker, device_settings, client_id)
    who = {"revoke": ("vendor", "acme"), "release": ("owner", "alice"), "transfer": ("admin", None)}
    headers = await bearer(admin, *who[action])
    body = {"to": "bob"} if action == "transfer" else None
    response = await api.post(f"{DEVICE}/{action}", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert not await _opens(secure_broker, client_id, key, client_id)
    if action == "transfer":
        # The new owner's window is open: the device activates again, for a new key.
        assert (await admin.show("acme", "thermo-1", MAC)).state == "claimed"
        again = await activate(device_settings, MAC, client_id=client_id, seal=True)
        assert again.ok and again.key and again.key != key
        assert await _opens(secure_broker, client_id, again.key, client_id)
        assert not await _opens(secure_broker, client_id, key, client_id)


@pytest.mark.usefixtures("secure_bridge")
@pytest.mark.parametrize("action", ["revoke", "release", "transfer"])
async def test_attack_old_key_opens_the_broker_after_a_cli_lifecycle_change(
    action: str,
    admin: Admin,
    secure_broker: SecureBroker,
    secure_settings: Settings,
    device_settings: Settings,
) -> None:
    """Was: `bridge transfer` left the previous owner's key opening the broker."""
    client_id = f"cli-{action}"
    key = await _activated(admin, secure_broker, device_settings, client_id)
    env = _env(
        secure_settings,
        BRIDGE_MQTT_CA_FILE=str(secure_broker.ca_file),
        BRIDGE_DYNSEC="true",
        BRIDGE_DYNSEC_USERNAME="bridge-admin",
        BRIDGE_DYNSEC_PASSWORD=secure_broker.admin_password,
    )
    extra = {"revoke": [], "release": ["--owner", "alice"], "transfer": ["--to", "bob"]}
    run = await bridge_cli(env, action, "acme", "thermo-1", MAC, *extra[action])
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr
    assert not await _opens(secure_broker, client_id, key, client_id)


@pytest.mark.usefixtures("secure_bridge")
async def test_attack_owner_reenables_a_device_its_vendor_revoked(
    admin: Admin,
    api: httpx.AsyncClient,
    secure_broker: SecureBroker,
    device_settings: Settings,
) -> None:
    key = await _activated(admin, secure_broker, device_settings, "revoked-1")
    vendor = await bearer(admin, "vendor", "acme")
    alice = await bearer(admin, "owner", "alice")
    assert (await api.post(f"{DEVICE}/revoke", headers=vendor)).status_code == 200

    refused = await api.post(f"{DEVICE}/reenable", headers=alice)
    assert refused.status_code == 403
    assert refused.json() == {
        "code": "forbidden",
        "message": f"The MAC address {MAC} (acme/thermo-1) was revoked by its vendor; only "
        "the vendor or an administrator can re-enable it.",
    }
    assert (await admin.show("acme", "thermo-1", MAC)).state == "revoked"
    retry = await activate(device_settings, MAC, client_id="revoked-1", seal=True)
    assert retry.reply["code"] == "revoked"
    assert not await _opens(secure_broker, "revoked-1", key, "revoked-1")
    refusals = await admin.audit(vendor="acme", model="thermo-1", code="forbidden")
    assert [(e.action, e.owner) for e in refusals] == [("reenable", "alice")]

    # The vendor (or an administrator) can.
    assert (await api.post(f"{DEVICE}/reenable", headers=vendor)).status_code == 200
    again = await activate(device_settings, MAC, client_id="revoked-1", seal=True)
    assert again.ok and again.key
    assert await _opens(secure_broker, "revoked-1", again.key, "revoked-1")


@pytest.mark.usefixtures("secure_bridge")
async def test_attack_owner_releases_and_claims_again_to_undo_a_vendor_revoke(
    admin: Admin,
    api: httpx.AsyncClient,
    secure_broker: SecureBroker,
    device_settings: Settings,
) -> None:
    await _activated(admin, secure_broker, device_settings, "revoked-2")
    vendor = await bearer(admin, "vendor", "acme")
    alice = await bearer(admin, "owner", "alice")
    assert (await api.post(f"{DEVICE}/revoke", headers=vendor)).status_code == 200
    assert (await api.post(f"{DEVICE}/release", headers=alice)).status_code == 200
    claim = {"vendor": "acme", "model": "thermo-1", "identifier": MAC}
    assert (await api.post("/v1/claims", json=claim, headers=alice)).status_code == 200
    row = await admin.show("acme", "thermo-1", MAC)
    assert (row.owner, row.state) == ("alice", "revoked")
    retry = await activate(device_settings, MAC, client_id="revoked-2", seal=True)
    assert retry.reply["code"] == "revoked"
    assert (await api.post(f"{DEVICE}/reenable", headers=alice)).status_code == 403


async def test_an_owners_own_revoke_is_the_owners_to_undo(admin: Admin, settings: Settings) -> None:
    """A portal revoking for an owner (Python API, role owner): that owner may re-enable."""
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    owner = Admin(admin.store, settings=settings, actor="portal:alice", role=Role.OWNER)
    await owner.revoke("acme", "thermo-1", MAC)
    result = await owner.reenable("acme", "thermo-1", MAC)
    assert result.previous_state == "revoked"
    assert (await admin.show("acme", "thermo-1", MAC)).state == "claimed"


@pytest.mark.usefixtures("secure_bridge")
async def test_attack_old_key_opens_the_broker_after_a_forced_unapprove(
    admin: Admin,
    api: httpx.AsyncClient,
    secure_broker: SecureBroker,
    device_settings: Settings,
) -> None:
    """A vendor takes an activated device off its list (`--force`): the row is gone, and
    its key must not keep opening the broker."""
    key = await _activated(admin, secure_broker, device_settings, "unapproved-1")
    vendor = await bearer(admin, "vendor", "acme")
    body = {"identifiers": [MAC], "force": True}
    response = await api.post("/v1/models/acme/thermo-1/unapprove", json=body, headers=vendor)
    assert response.status_code == 200, response.text
    assert not await _opens(secure_broker, "unapproved-1", key, "unapproved-1")
