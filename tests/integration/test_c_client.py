"""The C client (clients/c) activates against the real bridge, broker and database.

The example program `pbridge-activate` is built with `make` when missing; a missing
compiler or library fails these tests (never a skip): `clients/c/ci.sh` installs them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from bridge import embedded, keys, protocol
from bridge.admin import Admin
from bridge.config import Settings
from bridge.embedded import client_endpoint
from tests.helpers import RunningBridge, start_bridge
from tests.services import free_port

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "c"
BINARY = CLIENT_DIR / "build" / "pbridge-activate"
VENDOR, MODEL, PLAIN, PROOF = "acme", "thermo-1", "plain-1", "lock-9"
MAC = "00:1A:2B:3C:4D:5E"
KEY_LINE = re.compile(r"^key: ([0-9a-f]{40})( \(was sealed\))?$", re.MULTILINE)


@pytest.fixture(scope="module")
def c_client() -> Path:
    """The example binary, (re)built by make when missing or older than its sources;
    fails loudly when it cannot be."""
    assert shutil.which("make"), "make is missing: run clients/c/ci.sh (it installs the tools)"
    build = subprocess.run(
        ["make", "-C", str(CLIENT_DIR), "example"], capture_output=True, text=True, check=False
    )
    assert build.returncode == 0, (
        "building the C client failed (missing cc, libsodium-dev, libjsmn-dev or "
        f"libmosquitto-dev? run clients/c/ci.sh):\n{build.stdout}\n{build.stderr}"
    )
    assert BINARY.exists()
    return BINARY


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def key(self) -> str | None:
        match = KEY_LINE.search(self.out)
        return match.group(1) if match else None

    @property
    def sealed(self) -> bool:
        return "(was sealed)" in self.out


async def run_c(binary: Path, settings: Settings, *args: str, timeout: float = 30.0) -> Run:
    endpoint = client_endpoint(settings)
    argv = [
        str(binary),
        "--host",
        endpoint.host,
        "--port",
        str(endpoint.port),
        "--prefix",
        settings.topic_prefix,
        "--timeout",
        "5",
        *args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def _model(admin: Admin, model: str = MODEL, *, plaintext: bool = False) -> None:
    await admin.add_model(VENDOR, model, kind="mac", plaintext_keys=plaintext)


async def _approved(
    admin: Admin, model: str = MODEL, number: str = MAC, *, plaintext: bool = False
) -> None:
    await _model(admin, model, plaintext=plaintext)
    await admin.approve(VENDOR, model, [number])
    await admin.claim(VENDOR, model, number, owner="alice")


def _device(model: str = MODEL, number: str = MAC) -> list[str]:
    return ["--vendor", VENDOR, "--model", model, "--identifier", number]


async def test_c_client_activates_sealed_by_default(
    c_client: Path, admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _approved(admin)
    run = await run_c(c_client, settings, *_device())
    assert run.code == 0, run
    assert run.sealed and run.key is not None
    assert f"ok: {VENDOR}/{MODEL} 001A2B3C4D5E" in run.out
    assert await admin.verify_key(VENDOR, MODEL, MAC, run.key)
    assert run.key not in run.err  # the key goes to stdout only


async def test_c_client_activates_in_plaintext_when_the_vendor_allows(
    c_client: Path, admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _approved(admin, PLAIN, plaintext=True)
    run = await run_c(c_client, settings, "--plaintext", *_device(PLAIN))
    assert run.code == 0, run
    assert not run.sealed and run.key is not None
    assert await admin.verify_key(VENDOR, PLAIN, MAC, run.key)


async def test_c_client_speaks_mqtt_3_1_1(
    c_client: Path, admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _approved(admin)
    run = await run_c(c_client, settings, "--mqtt", "3.1.1", *_device())
    assert run.code == 0, run
    assert run.key is not None and await admin.verify_key(VENDOR, MODEL, MAC, run.key)


async def test_c_client_falls_back_to_mqtt_3_1_1_when_the_broker_refuses_5(
    c_client: Path,
    admin: Admin,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The embedded amqtt broker speaks only 3.1.1: the default `--mqtt auto` falls back."""
    await _approved(admin)
    monkeypatch.setattr(embedded, "EMBEDDED_MQTT_URL", f"mqtt://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PATH", str(tmp_path))  # no mosquitto: serve runs amqtt
    settings = settings.model_copy(update={"mqtt_url": None, "state_dir": tmp_path})
    running = await start_bridge(settings)
    try:
        run = await run_c(c_client, settings, *_device())
        forced = await run_c(c_client, settings, "--mqtt", "5", "--attempts", "1", *_device())
    finally:
        await running.halt()
    assert run.code == 0, run
    assert "trying MQTT 3.1.1" in run.err
    assert run.key is not None and await admin.verify_key(VENDOR, MODEL, MAC, run.key)
    assert forced.code == 2, forced  # MQTT 5 only: nothing to talk to


async def test_c_client_refusals_exit_1_with_the_code(
    c_client: Path, admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    await _approved(admin)
    await _model(admin, "fresh-1")
    await admin.approve(VENDOR, "fresh-1", [MAC])  # approved, never claimed
    cases = [
        (_device("thermo-9"), "unknown_model"),
        (_device(MODEL, "00:1A:2B:3C:4D:5"), "invalid_identifier"),
        (_device(MODEL, "00:1A:2B:3C:4D:99"), "not_approved"),
        (_device("fresh-1"), "not_claimed"),
        (["--plaintext", *_device()], "seal_required"),
    ]
    for args, code in cases:
        run = await run_c(c_client, settings, *args)
        assert run.code == 1, (code, run)
        assert re.search(rf"^error: {code}: \S.*\.$", run.err, re.MULTILINE), (code, run)
        assert run.key is None
    first = await run_c(c_client, settings, *_device())
    assert first.code == 0, first
    again = await run_c(c_client, settings, *_device())  # a new request id: no second key
    assert again.code == 1 and "error: already_activated: " in again.err, again
    await admin.revoke(VENDOR, MODEL, MAC)
    revoked = await run_c(c_client, settings, *_device())
    assert revoked.code == 1 and "error: revoked: " in revoked.err, revoked


async def test_c_client_retries_identically_after_a_lost_reply(
    c_client: Path, admin: Admin, settings: Settings, bridge: RunningBridge
) -> None:
    """The first reply is dropped; the resend (same request id) gets the stored reply.

    Had the client sent a new request id, the bridge would answer already_activated.
    """
    await _approved(admin)
    run = await run_c(
        c_client, settings, "--drop-replies", "1", "--timeout", "2", "--attempts", "3", *_device()
    )
    assert run.code == 0, run
    assert "dropping reply 1" in run.err and "sending the identical request again" in run.err
    assert run.key is not None and await admin.verify_key(VENDOR, MODEL, MAC, run.key)


async def test_c_client_resends_the_stored_reply_to_a_rebooted_device(
    c_client: Path, admin: Admin, settings: Settings, bridge: RunningBridge, tmp_path: Path
) -> None:
    """A device that kept its client id, request id and key pair across a reboot."""
    await _approved(admin)
    private = tmp_path / "x25519.hex"
    private.write_text(secrets.token_hex(32))
    ids = ["--client-id", "device-c-reboot", "--request-id", "boot-1"]
    first = await run_c(c_client, settings, *ids, "--private-key-file", str(private), *_device())
    second = await run_c(c_client, settings, *ids, "--private-key-file", str(private), *_device())
    assert first.code == 0 and second.code == 0, (first, second)
    assert first.key == second.key is not None
    other = tmp_path / "other.hex"
    other.write_text(secrets.token_hex(32))
    third = await run_c(c_client, settings, *ids, "--private-key-file", str(other), *_device())
    assert third.code == 1 and "error: sealed: " in third.err, third


async def test_c_client_device_proof(
    c_client: Path, admin: Admin, settings: Settings, bridge: RunningBridge, tmp_path: Path
) -> None:
    await _model(admin, PROOF)
    assert await admin.create_enrollment_key(VENDOR, PROOF) == 1
    await admin.approve(VENDOR, PROOF, [MAC])
    await admin.claim(VENDOR, PROOF, MAC, owner="alice")
    _, secret_hex = await admin.device_secret(VENDOR, PROOF, MAC)
    wrong = tmp_path / "wrong.hex"
    wrong.write_text(secrets.token_hex(32) + "\n")
    refused = await run_c(c_client, settings, "--device-secret-file", str(wrong), *_device(PROOF))
    assert refused.code == 1 and "error: not_approved: " in refused.err, refused
    missing = await run_c(c_client, settings, *_device(PROOF))
    assert missing.code == 1 and "error: not_approved: " in missing.err, missing
    right = tmp_path / "secret.hex"
    right.write_text(secret_hex + "\n")
    run = await run_c(c_client, settings, "--device-secret-file", str(right), *_device(PROOF))
    assert run.code == 0, run
    assert run.key is not None and await admin.verify_key(VENDOR, PROOF, MAC, run.key)
    assert secret_hex not in run.out + run.err


async def test_c_client_exit_codes_without_a_bridge(
    c_client: Path, settings: Settings, tmp_path: Path
) -> None:
    # Broker up, no bridge: no reply -> 2, after the attempts.
    run = await run_c(c_client, settings, "--timeout", "1", "--attempts", "2", *_device())
    assert run.code == 2 and "error: timeout: " in run.err, run
    assert run.err.count("sending the identical request again") == 1
    # Nothing listening at all -> 2.
    dead = await asyncio.create_subprocess_exec(
        str(c_client), "--host", "127.0.0.1", "--port", "1", "--timeout", "1", "--attempts", "1",
        *_device(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(dead.communicate(), 20)
    assert dead.returncode == 2, err
    # Usage errors speak like `bridge`: one line, exit 1.
    usage = await run_c(c_client, settings, "--vendor", VENDOR)
    assert usage.code == 1 and usage.err.startswith("error: usage: "), usage
    bad = tmp_path / "bad.hex"
    bad.write_text("not hex at all, and a secret maybe")
    unreadable = await run_c(c_client, settings, "--device-secret-file", str(bad), *_device())
    assert unreadable.code == 1 and "a secret maybe" not in unreadable.err, unreadable


async def test_attack_forged_replies_on_the_reply_topic_do_not_reach_the_c_client(
    c_client: Path, settings: Settings
) -> None:
    """Someone who can publish on a device's reply topic (a broker without the ACL) sees
    the request and answers first: with another request id, then with a plaintext key
    to a sealed request (a downgrade). The client ignores both and takes the sealed reply.
    """
    endpoint = client_endpoint(settings)
    client_id = "device-c-forged"
    reply = protocol.reply_topic(settings.topic_prefix, client_id)
    async with aiomqtt.Client(endpoint.host, endpoint.port, identifier="attacker") as mqtt:
        await mqtt.subscribe(protocol.activate_topic(settings.topic_prefix, client_id), qos=1)
        task = asyncio.create_task(
            run_c(c_client, settings, "--client-id", client_id, "--timeout", "8", *_device())
        )
        async with asyncio.timeout(20):
            async for message in mqtt.messages:
                assert isinstance(message.payload, bytes)
                request = json.loads(message.payload)
                break
        rid = request["request_id"]
        public = base64.b64decode(request["public_key"])
        forged_plain = protocol.ok_reply(rid, VENDOR, MODEL, "001A2B3C4D5E", key="ab" * 20)
        other_rid = protocol.ok_reply("someone-else", VENDOR, MODEL, "001A2B3C4D5E", key="cd" * 20)
        genuine_key = keys.generate_key()
        sealed = protocol.ok_reply(
            rid, VENDOR, MODEL, "001A2B3C4D5E", sealed_key=keys.seal(genuine_key, public, rid)
        )
        for payload in (b"not json", other_rid, forged_plain, sealed):
            await mqtt.publish(reply, payload, qos=1)
        run = await task
    assert run.code == 0, run
    assert run.key == genuine_key
    assert "ignoring an unsealed key" in run.err
