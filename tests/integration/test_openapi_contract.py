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
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.tokens import create_token
from tests.helpers import api_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("BRIDGE_CONTRACT_EXAMPLES", "10"))
#: A bound on the whole run, far above what it takes, so a stuck run fails instead of hanging.
RUN_SECONDS = 60 * max(10, EXAMPLES)


@dataclass(frozen=True)
class Target:
    url: str
    token: str = field(repr=False)


@pytest.fixture
async def token(admin: Admin) -> str:
    """Something for the requests to reach: models of two kinds, approved and claimed devices."""
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.add_model("acme", "cam-2", kind="serial", pattern=r"[A-Z]{2}\d{3}")
    await admin.approve("acme", "thermo-1", ["00:1A:2B:3C:4D:5E", "00:1A:2B:3C:4D:5F"])
    await admin.approve("acme", "cam-2", ["AB100", "AB101"])
    await admin.claim("acme", "thermo-1", "00:1A:2B:3C:4D:5E", owner="alice")
    await admin.claim("acme", "cam-2", "AB100", owner="bob")
    return (await create_token(admin.store, "admin", actor="test")).token


@pytest.fixture
def target(settings: Settings, token: str) -> Iterator[Target]:
    assert settings.mqtt_url is not None
    broker = settings.mqtt_url.get_secret_value()
    with api_server(settings, BRIDGE_MQTT_URL=broker) as server:
        yield Target(server.url, token)


@pytest.mark.slow
def test_openapi_document_matches_what_the_api_does(target: Target, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
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
        "--header",
        f"Authorization: Bearer {target.token}",
        # Reproducible: the same requests on every run, nothing remembered between runs.
        "--generation-deterministic",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
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
    print(out[-3000:])  # the run's summary, for `pytest -s` and the CI log
    # The run must have tested something, in every phase, before its verdict counts.
    assert "Stateful" in out, out[-4000:]
    assert run.returncode == 0, out[-20000:]
