"""Fixtures shared by the integration tests that call the HTTP API in process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.web.app import create_app


@pytest.fixture
async def api(admin: Admin, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API application on the test's store, called in process (no server)."""
    transport = httpx.ASGITransport(app=create_app(admin.store, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as client:
        yield client
