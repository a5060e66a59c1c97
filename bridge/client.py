"""The reference device client: what firmware does, in Python.

Subscribe to the private reply topic first, then publish the request, then wait
for the reply whose request id matches. By default (``seal``) the request carries
an X25519 public key and the key comes back sealed to it; with ``device_secret`` (the
factory secret of a model that requires device proof) it carries the ``proof``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge import keys, mqtt, protocol
from bridge.config import MqttEndpoint


@dataclass(frozen=True)
class ActivationResult:
    reply: dict[str, Any]
    key: str | None  # the plain key on success (unsealed when sealed; None if it cannot be)

    @property
    def ok(self) -> bool:
        return self.reply.get("status") == "ok"

    def __repr__(self) -> str:
        status, code = self.reply.get("status"), self.reply.get("code")
        return f"ActivationResult(status={status!r}, code={code!r})"


def new_client_id() -> str:
    return f"device-{secrets.token_hex(6)}"


def new_request_id() -> str:
    return secrets.token_hex(8)


async def activate_device(
    endpoint: MqttEndpoint,
    *,
    prefix: str,
    vendor: str,
    model: str,
    identifier: str,
    client_id: str | None = None,
    request_id: str | None = None,
    seal: bool = True,
    private_key: X25519PrivateKey | None = None,
    device_secret: bytes | None = None,
    timeout: float = 10.0,
) -> ActivationResult:
    """Activate once; raises TimeoutError when no reply comes within ``timeout``.

    ``seal=False`` asks for the key in plaintext, which only models whose vendor chose
    plaintext delivery grant (others answer ``seal_required``). A retry of a request
    (same client id and request id) gets the reply stored for the first one, sealed to
    the first one's public key: pass the same ``private_key`` to read it.
    """
    client_id = client_id or new_client_id()
    request_id = request_id or new_request_id()
    request: dict[str, Any] = {
        "v": 1,
        "request_id": request_id,
        "vendor": vendor,
        "model": model,
        "identifier": identifier,
    }
    private = (private_key or X25519PrivateKey.generate()) if seal else None
    if private is not None:
        raw = private.public_key().public_bytes_raw()
        request["public_key"] = base64.b64encode(raw).decode()
    if device_secret is not None:
        request["proof"] = keys.device_proof(device_secret, client_id, request_id)
    async with (
        asyncio.timeout(timeout),
        mqtt.connect(endpoint, client_id, persistent=False) as link,
    ):
        c = link.client
        await c.subscribe(protocol.reply_topic(prefix, client_id), qos=1)
        await c.publish(
            protocol.activate_topic(prefix, client_id), json.dumps(request).encode(), qos=1
        )
        async for message in c.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                reply = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(reply, dict) or reply.get("request_id") not in (request_id, None):
                continue  # an answer to an earlier request of ours
            return ActivationResult(reply, _key_of(reply, private, request_id))
    raise TimeoutError  # the broker closed the stream without our reply


def _key_of(reply: dict[str, Any], private: X25519PrivateKey | None, request_id: str) -> str | None:
    if reply.get("status") != "ok":
        return None
    sealed = reply.get("sealed_key")
    if private is not None and isinstance(sealed, dict):
        try:
            return keys.unseal(private, sealed, request_id)
        except (ValueError, KeyError, TypeError):
            return None  # sealed to another key pair: a replay of an earlier run's request
    key = reply.get("key")
    return key if isinstance(key, str) else None
