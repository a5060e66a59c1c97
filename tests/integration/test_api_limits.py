"""Costly HTTP input: bodies are limited before they are read, tokens are checked before a
body is read, and every answer carries the security headers. Against `bridge api` as a
real process (uvicorn) on a real PostgreSQL, over raw sockets where the client's own
behaviour matters."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from bridge.admin import Admin
from bridge.config import Settings
from bridge.tokens import create_token
from bridge.web import guard as api_guard
from tests.helpers import ApiServer, api_server

LIMIT = 1_048_576  # the default BRIDGE_API_MAX_BODY_BYTES


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[ApiServer]:
    with api_server(settings) as running:
        yield running


async def _token(admin: Admin, role: str = "vendor", subject: str | None = "acme") -> str:
    return (await create_token(admin.store, role, subject, actor="test")).token


class _Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> dict[str, object]:
        if self.headers.get("transfer-encoding") == "chunked":
            size, _, rest = self.body.partition(b"\r\n")
            body = rest[: int(size, 16)]
        else:
            body = self.body
        parsed: dict[str, object] = json.loads(body)
        return parsed


async def _read_answer(reader: asyncio.StreamReader, timeout: float = 5) -> _Answer:
    data = b""
    async with asyncio.timeout(timeout):
        while b"\r\n\r\n" not in data:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
        head = data.partition(b"\r\n\r\n")[0].lower()
        # Read the (small) body too: up to the declared length, or the close.
        if b"content-length:" in head:
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            while len(data.partition(b"\r\n\r\n")[2]) < length:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
    return _Answer(data)


async def _open(server: ApiServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return await asyncio.open_connection(parts.hostname, parts.port)


def _head(path: str, token: str | None, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: bridge.test", "Content-Type: application/json"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


async def test_attack_oversized_body_is_refused_before_it_is_read(
    admin: Admin, server: ApiServer
) -> None:
    """A declared 50 MB body: 413 at once, while the client has sent only the headers."""
    token = await _token(admin)
    reader, writer = await _open(server)
    try:
        writer.write(
            _head("/v1/models/acme/thermo-1/approvals/bulk", token, "Content-Length: 50000000")
        )
        await writer.drain()
        answer = await _read_answer(reader)  # nothing of the body was sent
    finally:
        writer.close()
    assert answer.status == 413
    assert answer.json() == {
        "code": "too_large",
        "message": f"The request body is larger than {LIMIT:,} bytes, the most this API "
        "reads; send fewer rows per request.",
    }
    assert answer.headers["x-content-type-options"] == "nosniff"


async def test_attack_chunked_body_without_length_is_cut_at_the_limit(
    admin: Admin, server: ApiServer
) -> None:
    """No Content-Length: the body is counted as it streams and refused past the limit."""
    token = await _token(admin)
    reader, writer = await _open(server)
    chunk = b"[" + b'"00:00:00:00:00:01",' * 3200  # 64 kB of a never-ending JSON array
    sent = 0
    answer: _Answer | None = None
    try:
        writer.write(
            _head("/v1/models/acme/thermo-1/approvals", token, "Transfer-Encoding: chunked")
        )
        with contextlib.suppress(ConnectionError):
            while sent < 50 * LIMIT:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
                sent += len(chunk)
                with contextlib.suppress(TimeoutError):
                    answer = await _read_answer(reader, timeout=0.01)
                    break
        if answer is None:
            answer = await _read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 413, (answer.status, answer.body[:200])
    assert answer.json()["code"] == "too_large"
    # The server stopped it near the limit, not after the 50 MB the client had in mind.
    assert sent < 4 * LIMIT, sent


async def test_attack_unauthenticated_large_body_is_not_read(server: ApiServer) -> None:
    """Without a valid token: 401 after the headers; the body is neither awaited nor parsed."""
    for token in (None, "bt_0123456789ab_" + "x" * 43):
        reader, writer = await _open(server)
        try:
            writer.write(
                _head("/v1/models/acme/thermo-1/approvals/bulk", token, f"Content-Length: {LIMIT}")
            )
            await writer.drain()
            answer = await _read_answer(reader)  # the 1 MiB body was never sent
        finally:
            writer.close()
        assert answer.status == 401
        assert answer.json()["code"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"

    # A body that would not even parse is answered 401, not 422: the token comes first.
    async with httpx.AsyncClient(base_url=server.url) as http:
        garbage = await http.post("/v1/claims", content=b"{not json" * 1000)
    assert garbage.status_code == 401 and garbage.json()["code"] == "unauthorized"


async def test_bodies_under_the_limit_still_work(admin: Admin, server: ApiServer) -> None:
    token = await _token(admin)
    async with httpx.AsyncClient(base_url=server.url) as http:
        headers = {"Authorization": f"Bearer {token}"}
        made = await http.post(
            "/v1/models", json={"model": "thermo-1", "kind": "mac"}, headers=headers
        )
        assert made.status_code == 201, made.text

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"identifiers": ['
            yield b'"00:00:00:00:00:01",' * 5000
            yield b'"00:00:00:00:00:02"]}'

        # httpx streams an async iterator chunked, without Content-Length.
        approved = await http.post(
            "/v1/models/acme/thermo-1/approvals",
            content=chunks(),
            headers={**headers, "Content-Type": "application/json"},
        )
    assert approved.status_code == 200, approved.text
    assert approved.json() == {"added": 2, "already": 0}


#: Every header every answer carries, whatever its route or status.
COMMON = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
DATA_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
PAGE_POLICY = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


async def test_attack_every_answer_carries_security_headers(
    admin: Admin, server: ApiServer
) -> None:
    vendor = {"Authorization": f"Bearer {await _token(admin)}"}
    owner = {"Authorization": f"Bearer {await _token(admin, 'owner', 'alice')}"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        answers = {
            "json 200": await http.get("/v1/me", headers=vendor),
            "json 201": await http.post(
                "/v1/models", json={"model": "m", "kind": "mac"}, headers=vendor
            ),
            "401": await http.get("/v1/me"),
            "403": await http.post("/v1/models", json={"model": "n", "kind": "mac"}, headers=owner),
            "404 api": await http.get("/v1/nowhere", headers=vendor),
            "404 outside": await http.get("/nowhere"),
            "405": await http.delete("/v1/me", headers=vendor),
            "409": await http.post(
                "/v1/models", json={"model": "m", "kind": "mac"}, headers=vendor
            ),
            "413": await http.post("/v1/models", content=b"x" * (LIMIT + 1), headers=vendor),
            "422": await http.post("/v1/models", json={"model": "x"}, headers=vendor),
            "openapi": await http.get("/openapi.json"),
            "page": await http.get("/"),
            "static": await http.get("/static/app.js"),
        }
    expected = {
        "json 200": 200, "json 201": 201, "401": 401, "403": 403, "404 api": 404,
        "404 outside": 404, "405": 405, "409": 409, "413": 413, "422": 422,
        "openapi": 200, "page": 200, "static": 200,
    }  # fmt: skip
    for name, answer in answers.items():
        assert answer.status_code == expected[name], (name, answer.status_code, answer.text)
        for header, value in COMMON.items():
            assert answer.headers.get(header) == value, (name, header)
        page = name in ("page", "static")
        assert answer.headers["content-security-policy"] == (
            PAGE_POLICY if page else DATA_POLICY
        ), name
        assert answer.headers["cache-control"] == ("no-cache" if name == "static" else "no-store")
        if answer.headers["content-type"].startswith("application/json") and name != "openapi":
            assert set(answer.json()) >= {"code", "message"} or answer.status_code < 300, name
    # Swagger UI would load a CDN's scripts into the page a token is typed into.
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/docs")).status_code == 404


async def test_attack_many_slow_bodies_at_once_are_bounded(admin: Admin, server: ApiServer) -> None:
    """32 requests hold a body open; the 33rd with a body is answered 503 at once."""
    token = await _token(admin)
    # Four tokens hold the 32 (one token holds at most a quarter of them).
    holders = [await _token(admin) for _ in range(4)]
    held: list[asyncio.StreamWriter] = []
    try:
        for i in range(32):
            _reader, writer = await _open(server)
            writer.write(
                _head("/v1/models", holders[i % 4], "Content-Length: 1000") + b'{"model": '
            )
            await writer.drain()
            held.append(writer)
        await asyncio.sleep(0.5)  # each is now being read by the server
        async with httpx.AsyncClient(base_url=server.url) as http:
            headers = {"Authorization": f"Bearer {token}"}
            busy = await http.post(
                "/v1/models", json={"model": "m", "kind": "mac"}, headers=headers
            )
            # A request without a body is not held up.
            me = await http.get("/v1/me", headers=headers)
    finally:
        for writer in held:
            writer.close()
    assert busy.status_code == 503, busy.text
    assert busy.json()["code"] == "unavailable"
    assert busy.headers["retry-after"] == "1"
    assert busy.headers["x-frame-options"] == "DENY"
    assert me.status_code == 200
    await asyncio.sleep(0.5)  # the server sees the held clients go
    async with httpx.AsyncClient(base_url=server.url) as http:
        made = await http.post(
            "/v1/models",
            json={"model": "m", "kind": "mac"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert made.status_code == 201, made.text


async def test_attack_strangers_slow_bodies_hold_no_slot(admin: Admin, server: ApiServer) -> None:
    """Found by the red team: 32 connections trickling a body to a path outside /v1/ (no
    token needed) took every body slot, and an owner's claim got 503 for as long as they
    stayed open. A token holder's trickled body is cut after the body deadline."""
    token = await _token(admin)
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(40):
            _reader, writer = await _open(server)
            writer.write(b"POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
            await writer.drain()
            held.append(writer)
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=server.url) as http:
            made = await http.post(
                "/v1/models",
                json={"model": "m2", "kind": "mac"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert made.status_code == 201, made.text
        # With a token, a body that never finishes is refused after the deadline.
        reader, writer = await _open(server)
        writer.write(_head("/v1/models", token, "Content-Length: 1000") + b'{"model": ')
        await writer.drain()
        answer = b""
        async with asyncio.timeout(api_guard.BODY_SECONDS + 10):
            while b"did not arrive within" not in answer:
                chunk = await reader.read(4096)
                assert chunk, answer
                answer += chunk
        writer.close()
        assert answer.startswith(b"HTTP/1.1 422"), answer[:200]
    finally:
        for writer in held:
            writer.close()


@pytest.mark.parametrize("name", ["a/b", "..", " ", "m\u202e", "x\u200by", " lead"])
async def test_attack_model_names_that_cannot_be_addressed_or_mislead_are_refused(
    admin: Admin, server: ApiServer, name: str
) -> None:
    """Found by the red team: a vendor could register `a/b` (no API path reaches it) or a
    name with a right-to-left override (displayed reversed everywhere)."""
    token = await _token(admin)
    async with httpx.AsyncClient(base_url=server.url) as http:
        made = await http.post(
            "/v1/models",
            json={"model": name, "kind": "mac"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert made.status_code in (400, 422), made.text
    assert made.json()["message"].endswith(".")
