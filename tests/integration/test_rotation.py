"""Rotating the server secret: issued keys keep verifying, stored replies keep replaying."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import SecretStr

from bridge.admin import Admin
from bridge.config import Settings
from bridge.errors import ConfigError
from tests.conftest import TEST_SECRET
from tests.helpers import activate, start_bridge

MAC = "00:1A:2B:3C:4D:5E"
#: Random per run, like TEST_SECRET: `serve` refuses a secret written in the repository.
ROTATED_SECRET = "rotated-secret-" + secrets.token_urlsafe(32)


def _rotated(settings: Settings, *, keep_old: bool) -> Settings:
    return settings.model_copy(
        update={
            "secret": SecretStr(ROTATED_SECRET),
            "previous_secrets": SecretStr(TEST_SECRET) if keep_old else None,
        }
    )


async def test_keys_issued_before_a_rotation_still_verify(admin: Admin, settings: Settings) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    device_key = X25519PrivateKey.generate()  # a retrying device keeps its key pair
    running = await start_bridge(settings)
    try:
        first = await activate(
            settings, MAC, client_id="dev-1", request_id="r-1", private_key=device_key
        )
    finally:
        await running.halt()
    assert first.ok and first.key is not None
    assert await admin.verify_key("acme", "thermo-1", "00-1a-2b-3c-4d-5e", first.key)
    assert not await admin.verify_key("acme", "thermo-1", MAC, "0" * 40)

    rotated = _rotated(settings, keep_old=True)
    async with Admin.connect(rotated, actor="test") as after:
        assert await after.verify_key("acme", "thermo-1", MAC, first.key)
        assert not await after.verify_key("acme", "thermo-1", MAC, "0" * 40)
    # The bridge on the rotated secret still resends the reply stored before it.
    running = await start_bridge(rotated)
    try:
        again = await activate(
            rotated, MAC, client_id="dev-1", request_id="r-1", private_key=device_key
        )
    finally:
        await running.halt()
    assert again.ok and again.key == first.key

    async with Admin.connect(_rotated(settings, keep_old=False), actor="test") as forgot:
        assert not await forgot.verify_key("acme", "thermo-1", MAC, first.key)


async def test_unknown_devices_do_not_verify_and_the_secret_is_required(
    admin: Admin, settings: Settings
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC])
    assert not await admin.verify_key("acme", "thermo-1", MAC, "0" * 40)  # never activated
    assert not await admin.verify_key("acme", "thermo-1", "02:00:00:00:00:01", "0" * 40)
    no_secret = settings.model_copy(update={"secret": None})
    async with Admin.connect(no_secret, actor="test") as blind:
        with pytest.raises(ConfigError, match="server secret"):
            await blind.verify_key("acme", "thermo-1", MAC, "0" * 40)
