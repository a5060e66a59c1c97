"""The OpenAPI document says exactly what the HTTP API accepts and answers.

Schemathesis' own command line, as a person would run it, against the real `bridge api`
process on the test's database and broker, with an administrator's token: every check
(``--checks all``: schema-valid requests accepted, schema-invalid ones refused, every
status code and body documented, ...), every phase (examples, coverage, fuzzing, and the
stateful phase, which follows the document's links from an approval or a device to that
device's show, revoke, re-enable and transfer).

Examples per operation come from ``BRIDGE_CONTRACT_EXAMPLES`` (10 by default, so the
README's test command stays minutes; ``.ci/run`` runs it again with 60).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.tokens import create_token
from tests.helpers import api_server

ROOT = Path(__file__).resolve().parents[2]
RELEASE: Final = "/v1/devices/{vendor}/{model}/{identifier}/release"
EXAMPLES = int(os.environ.get("BRIDGE_CONTRACT_EXAMPLES", "10"))
#: A bound on the whole run, far above what it takes, so a stuck run fails instead of hanging.
RUN_SECONDS = 300 + 30 * EXAMPLES


#: Only an owner's token may claim, list its devices and release: these get alice's token.
OWNER_ONLY: Final = ("POST /v1/claims", "GET /v1/devices", "POST " + RELEASE)


@dataclass(frozen=True)
class Target:
    url: str
    admin: str = field(repr=False)
    owner: str = field(repr=False)


@pytest.fixture
async def tokens(admin: Admin) -> tuple[str, str]:
    """Something for the requests to reach: models of two kinds, approved and claimed devices."""
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.add_model("acme", "cam-2", kind="serial", pattern=r"[A-Z]{2}\d{3}")
    await admin.approve("acme", "thermo-1", ["00:1A:2B:3C:4D:5E", "00:1A:2B:3C:4D:5F"])
    await admin.approve("acme", "cam-2", ["AB100", "AB101"])
    await admin.claim("acme", "thermo-1", "00:1A:2B:3C:4D:5E", owner="alice")
    await admin.claim("acme", "cam-2", "AB100", owner="bob")
    # Enough claimed devices that the earlier phases (which transfer, revoke and unapprove
    # what they find) leave some for the stateful phase to start from.
    claimed = [f"00:1A:2B:3C:4E:{n:02X}" for n in range(20)]
    await admin.approve("acme", "thermo-1", claimed)
    for mac in claimed:
        await admin.claim("acme", "thermo-1", mac, owner="alice")
    administrator = await create_token(admin.store, "admin", actor="test")
    owner = await create_token(admin.store, "owner", "alice", actor="test")
    return administrator.token, owner.token


@pytest.fixture
def target(settings: Settings, tokens: tuple[str, str]) -> Iterator[Target]:
    assert settings.mqtt_url is not None
    broker = settings.mqtt_url.get_secret_value()
    # A generous claim throttle: the run is about the document, and 429s would stop the
    # owner's claims from reaching a device at all.
    with api_server(
        settings, BRIDGE_MQTT_URL=broker, BRIDGE_API_CLAIM_FAILURES="1000000"
    ) as server:
        yield Target(server.url, *tokens)


def _config(target: Target) -> str:
    """The run's configuration: whose token each operation carries, and where the stateful
    phase starts from a model that has devices (the list of acme/thermo-1, whose first
    device is claimed), so that its links reach claimed devices."""
    owner_only = "|".join(re.escape(name) for name in OWNER_ONLY)
    return f"""
headers = {{ Authorization = "Bearer {target.admin}" }}

[[operations]]
include-name-regex = '^({owner_only})$'  # a literal string: no TOML escapes
headers = {{ Authorization = "Bearer {target.owner}" }}

[[operations]]
include-name = "GET /v1/models/{{vendor}}/{{model}}/devices"
parameters = {{ "path.vendor" = "acme", "path.model" = "thermo-1" }}
"""


@pytest.mark.slow
def test_openapi_document_matches_what_the_api_does(target: Target, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(target))
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{target.url}/openapi.json",
        "--checks",
        "all",
        # Replaced by the same check that lets through only the refusals the document
        # states in words (openapi_refusals.py says which, and why).
        "--exclude-checks",
        "positive_data_acceptance",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(EXAMPLES),
        # Reproducible: the same requests on every run, nothing remembered between runs.
        "--generation-deterministic",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit,ndjson",
        "--report-dir",
        str(tmp_path),
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    environment["SCHEMATHESIS_HOOKS"] = "tests.integration.openapi_refusals"
    environment["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(
        command,
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    out = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(out)  # the whole run, to read afterwards
    print(out[-3000:])  # its summary, for `pytest -s` and the CI log
    # The run must have tested something, in every phase, before its verdict counts.
    assert "Stateful" in out, out[-4000:]
    assert run.returncode == 0, out[-20000:]
