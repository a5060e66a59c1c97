"""Schemathesis against the running `bridge api` process: requests generated from its own
OpenAPI document (valid and invalid) never get a server error."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import APIOperation, Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from bridge.admin import Admin
from bridge.config import Settings
from bridge.tokens import create_token
from tests.helpers import api_server

Operation = APIOperation[Any, Any, Any, Any]

#: Operations only an owner's token may call; the rest run with an administrator's.
OWNER_ONLY = {("POST", "/v1/claims"), ("GET", "/v1/devices")}
#: Examples per operation and mode: enough to reach every validator, fast enough for CI.
EXAMPLES = 20


@dataclass(frozen=True)
class Target:
    url: str
    owner: str
    admin: str


@pytest.fixture
async def target_data(admin: Admin) -> tuple[str, str]:
    """Something for the generated requests to find: a model, approved and claimed devices."""
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.add_model("acme", "cam-2", kind="serial", pattern=r"[A-Z]{2}\d{3}")
    await admin.approve("acme", "thermo-1", ["00:1A:2B:3C:4D:5E", "00:1A:2B:3C:4D:5F"])
    await admin.approve("acme", "cam-2", ["AB100"])
    await admin.claim("acme", "thermo-1", "00:1A:2B:3C:4D:5E", owner="alice")
    owner = await create_token(admin.store, "owner", "alice", actor="test")
    administrator = await create_token(admin.store, "admin", actor="test")
    return owner.token, administrator.token


@pytest.fixture
def api_target(settings: Settings, target_data: tuple[str, str]) -> Iterator[Target]:
    # A generous throttle: this run is about server errors, not about 429s.
    with api_server(settings, BRIDGE_API_CLAIM_FAILURES="100000") as server:
        yield Target(server.url, *target_data)


def test_generated_requests_get_no_server_error(api_target: Target) -> None:
    # Schemathesis' pytest plugin does not run under pytest 9 yet, so this drives
    # its strategies with hypothesis directly: every operation, valid and invalid data.
    schema = schemathesis.openapi.from_url(f"{api_target.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= 15
    for operation in operations:
        owner_side = (operation.method.upper(), operation.path) in OWNER_ONLY or (
            operation.path.endswith("/release")
        )
        token = api_target.owner if owner_side else api_target.admin
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, api_target.url, token)


def _fuzz(operation: Operation, mode: GenerationMode, url: str, token: str) -> None:
    @hypothesis.given(case=operation.as_strategy(mode))
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    def call(case: Case[Operation]) -> None:
        case.call_and_validate(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error]
        )

    call()
