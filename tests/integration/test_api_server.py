"""`bridge token` and `bridge api` as a person runs them: real processes, real database."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket

import httpx

from bridge.config import Settings
from bridge.runtime import serve
from tests.helpers import api_server, token_secret
from tests.integration.test_cli import _env, bridge_cli
from tests.services import free_port


async def test_token_create_use_revoke_against_a_running_api(settings: Settings) -> None:
    env = _env(settings)
    created = await bridge_cli(env, "token", "create", "--owner", "alice")
    assert created.returncode == 0, created.stderr
    first, token = created.stdout.strip().splitlines()
    match = re.fullmatch(
        r"created token ([0-9a-f]{12}) for owner alice; it is shown only this once:", first
    )
    assert match, first
    token_id = match.group(1)
    assert token.startswith(f"bt_{token_id}_")

    listed = await bridge_cli(env, "token", "list")
    assert token_id in listed.stdout and "owner" in listed.stdout and "active" in listed.stdout
    assert token_secret(token) not in listed.stdout

    with api_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            headers = {"Authorization": f"Bearer {token}"}
            me = await http.get("/v1/me", headers=headers)
            assert me.status_code == 200 and me.json()["subject"] == "alice"
            page = await http.get("/")
            assert page.status_code == 200 and "Add a device" in page.text
            assert "/v1/claims" in (await http.get("/openapi.json")).json()["paths"]

            revoked = await bridge_cli(env, "token", "revoke", token_id)
            assert revoked.returncode == 0, revoked.stderr
            assert revoked.stdout.strip() == f"revoked token {token_id} (owner alice)"
            assert (await http.get("/v1/me", headers=headers)).status_code == 401
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.process.wait, 10) == 0
    assert token not in server.log.read_text()


async def test_token_cli_refusals(settings: Settings) -> None:
    env = _env(settings)
    unknown = await bridge_cli(env, "token", "revoke", "0123456789ab")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "error: not_found: There is no token with the id 0123456789ab."
    )
    both = await bridge_cli(env, "token", "create", "--owner", "a", "--admin")
    assert both.returncode == 1 and "not allowed with argument" in both.stderr
    admin = await bridge_cli(env, "token", "create", "--admin")
    assert admin.returncode == 0 and "for an administrator" in admin.stdout


async def test_api_refuses_a_port_in_use_in_one_sentence(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = await bridge_cli(_env(settings), "api", "--host", "127.0.0.1", "--port", str(port))
    assert run.returncode == 1
    assert run.stderr.strip().startswith(
        f"error: config: the HTTP API cannot listen on 127.0.0.1:{port}"
    )


async def test_serve_with_api_answers_http_beside_mqtt(settings: Settings) -> None:
    port = free_port()
    both = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": port})
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(both, stop, ready=ready, api=True))
    try:
        await asyncio.wait_for(ready.wait(), 15)  # subscribed over MQTT
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    answer = await http.get("/v1/me")
                    break
                await asyncio.sleep(0.05)
            assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
