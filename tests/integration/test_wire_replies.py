"""Real replies of the running bridge against the published schemas (schemas/wire/).

Real Mosquitto, real PostgreSQL, the bridge in the test's loop: whatever the bridge
sends must be what docs/protocol.md and reply.schema.json say, success and refusal.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import TypeAdapter

from bridge import protocol
from bridge.admin import Admin
from bridge.config import Settings
from tests.helpers import RunningBridge, activate, raw_exchange

WIRE = Path(__file__).resolve().parents[2] / "schemas" / "wire"
REPLY_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((WIRE / "reply.schema.json").read_text(encoding="utf-8"))
)
REQUEST_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((WIRE / "request.schema.json").read_text(encoding="utf-8"))
)
REPLIES = TypeAdapter(protocol.ActivationReply)

MAC = "00:1A:2B:3C:4D:5E"
UNCLAIMED = "00:1A:2B:3C:4D:60"
LEGACY = "00:1A:2B:3C:4D:61"


def _request(request_id: str, **fields: Any) -> bytes:
    body = {
        "v": 1,
        "request_id": request_id,
        "vendor": "acme",
        "model": "thermo-1",
        "identifier": MAC,
        **fields,
    }
    REQUEST_SCHEMA.validate(body)  # what the tests send is itself a valid request
    return json.dumps(body).encode()


def _conforms(reply: dict[str, Any]) -> dict[str, Any]:
    REPLY_SCHEMA.validate(reply)
    REPLIES.validate_python(reply)
    return reply


async def test_real_replies_of_every_kind_validate_against_the_reply_schema(
    admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.add_model("acme", "legacy-1", kind="mac", plaintext_keys=True)
    await admin.approve("acme", "thermo-1", [MAC, UNCLAIMED])
    await admin.approve("acme", "legacy-1", [LEGACY])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    await admin.claim("acme", "legacy-1", LEGACY, owner="alice")
    seen: dict[str, dict[str, Any]] = {}

    # ok, sealed: the reference client unseals it.
    sealed = await activate(settings, MAC, client_id="wire-sealed", request_id="s-1")
    seen["ok sealed"] = _conforms(sealed.reply)
    assert sealed.ok and "sealed_key" in sealed.reply and "key" not in sealed.reply
    assert sealed.key is not None and len(sealed.key) == 40

    # The identical retry gets the stored reply, byte for byte the same shape.
    again = await activate(settings, MAC, client_id="wire-sealed", request_id="s-1")
    assert _conforms(again.reply) == sealed.reply

    # ok, plaintext (a model whose vendor chose it).
    plain = await raw_exchange(
        settings,
        _request("p-1", model="legacy-1", identifier=LEGACY),
        client_id="wire-plain",
    )
    seen["ok plain"] = _conforms(plain)
    assert plain["status"] == "ok" and len(plain["key"]) == 40

    async def refusal(payload: bytes, client_id: str, code: str) -> None:
        reply = _conforms(await raw_exchange(settings, payload, client_id=client_id))
        assert reply["status"] == "error" and reply["code"] == code, reply
        seen[code] = reply

    await refusal(b"not json", "wire-m1", "malformed")
    assert seen["malformed"]["request_id"] is None
    unknown_field = json.dumps({"request_id": "m-2", "vendor": "a", "model": "b", "x": 1})
    reply = _conforms(await raw_exchange(settings, unknown_field.encode(), client_id="wire-m2"))
    assert reply["code"] == "malformed" and reply["request_id"] == "m-2"
    await refusal(_request("u-1", model="thermo-9"), "wire-u", "unknown_model")
    await refusal(_request("i-1", identifier="00:1A:2B"), "wire-i", "invalid_identifier")
    await refusal(
        _request("n-1", identifier="00:1A:2B:3C:4D:99", public_key=_pk()), "wire-n", "not_approved"
    )
    await refusal(_request("c-1", identifier=UNCLAIMED, public_key=_pk()), "wire-c", "not_claimed")
    await refusal(_request("q-1"), "wire-q", "seal_required")
    await refusal(_request("a-1", public_key=_pk()), "wire-a", "already_activated")
    await refusal(_request("r-1", public_key=_pk()), "root", "client_id_reserved")
    for n in range(settings.rate_limit_failures + 1):
        reply = _conforms(
            await raw_exchange(settings, _request(f"g-{n}", model="nope"), client_id="wire-g")
        )
    assert reply["code"] == "rate_limited" and reply["retry_after"] >= 1, reply
    seen["rate_limited"] = reply
    await admin.revoke("acme", "thermo-1", MAC)
    await refusal(_request("v-1", public_key=_pk()), "wire-v", "revoked")

    assert {
        "ok sealed",
        "ok plain",
        "malformed",
        "unknown_model",
        "invalid_identifier",
        "not_approved",
        "not_claimed",
        "seal_required",
        "already_activated",
        "client_id_reserved",
        "rate_limited",
        "revoked",
    } <= set(seen)


def _pk() -> str:
    raw = X25519PrivateKey.generate().public_key().public_bytes_raw()
    return base64.b64encode(raw).decode()
