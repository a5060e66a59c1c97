"""Every path that takes an identifier normalizes it: one device, many spellings; and the
claim step's "did you mean …?" for look-alike typos (never on the device-facing reply)."""

from __future__ import annotations

import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.errors import InvalidIdentifier, NotApproved
from tests.helpers import RunningBridge, activate


@pytest.mark.parametrize(
    ("kind", "approve_as", "claim_as", "activate_as", "canonical"),
    [
        ("mac", "00-1a-2b-3c-4d-5e", "001a2b3c4d5e", "001A.2B3C.4D5E", "001A2B3C4D5E"),
        ("imei", "49015420323751", "49-015420-323751-8", "490154203237518", "490154203237518"),
        # MEID A10000009296F2 = decimal 270113177609606898, check digit F (3GPP2 X.S0008).
        ("meid", "270113177609606898", "a10000009296f2", "A10000009296F2F", "A10000009296F2"),
        # ESN E69FFFFF = decimal 230 10485759 (3-digit manufacturer + 8-digit serial).
        ("esn", "23010485759", "e69fffff", "E69FFFFF", "E69FFFFF"),
        ("serial", "  th-000123 ", "TH-000123", "th-000123", "TH-000123"),
    ],
)
async def test_approve_claim_activate_in_different_spellings(
    admin: Admin,
    settings: Settings,
    bridge: RunningBridge,
    kind: str,
    approve_as: str,
    claim_as: str,
    activate_as: str,
    canonical: str,
) -> None:
    pattern = r"TH-\d{6}" if kind == "serial" else None
    await admin.add_model("acme", "thermo-1", kind=kind, pattern=pattern)
    report = await admin.approve("acme", "thermo-1", [approve_as, claim_as])
    assert (report.added, report.already) == (1, 0)  # two spellings, one device
    claimed = await admin.claim("acme", "thermo-1", claim_as, owner="alice")
    assert claimed.identifier == canonical
    result = await activate(settings, activate_as)
    assert result.ok, result.reply
    assert result.reply["identifier"] == canonical
    assert (await admin.show("acme", "thermo-1", approve_as)).state == "activated"


async def test_claim_suggests_a_look_alike_that_is_not_approved(admin: Admin) -> None:
    await admin.add_model("acme", "cam-2", kind="serial")
    await admin.approve("acme", "cam-2", ["AB100", "XY-2051"])
    with pytest.raises(NotApproved, match=r"did you mean AB100\?"):
        await admin.claim("acme", "cam-2", "AB1O0", owner="alice")  # letter O for zero
    with pytest.raises(NotApproved, match=r"did you mean XY-2051\?"):
        await admin.claim("acme", "cam-2", "XY-ZO51", owner="alice")  # two substitutions
    with pytest.raises(NotApproved) as three:
        await admin.claim("acme", "cam-2", "A81OO", owner="alice")  # four: another device
    assert "did you mean" not in three.value.message


async def test_claim_suggests_a_look_alike_for_an_invalid_identifier(admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", ["00:1A:2B:3C:4D:50"])
    with pytest.raises(InvalidIdentifier) as caught:
        await admin.claim("acme", "thermo-1", "00:1A:2B:3C:4D:5O", owner="alice")
    assert "did you mean 00:1A:2B:3C:4D:50?" in caught.value.message
    assert "MAC address" in caught.value.message and "'00:1A:2B:3C:4D:5O'" in caught.value.message


async def test_serial_pattern_with_look_alike_suggestion(admin: Admin) -> None:
    await admin.add_model("acme", "cam-3", kind="serial", pattern=r"SN\d{8}")
    await admin.approve("acme", "cam-3", ["sn12345678"])
    with pytest.raises(InvalidIdentifier, match=r"did you mean SN12345678\?"):
        await admin.claim("acme", "cam-3", "SN1234S678", owner="alice")


async def test_activation_reply_never_suggests(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await admin.add_model("acme", "cam-2", kind="serial", claim_required=False)
    await admin.approve("acme", "cam-2", ["AB100"])
    result = await activate(settings, "AB1O0", model="cam-2")
    assert result.reply["code"] == "not_approved"
    assert "did you mean" not in result.reply["message"]
    assert "AB100" not in result.reply["message"]
