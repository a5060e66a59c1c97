"""What every HTTP request meets before a route runs: size limit, token first, security headers.

An ASGI middleware around the API (:mod:`bridge.web.app` installs it):

- a body declared (``Content-Length``) larger than the limit is refused with
  413 ``too_large`` before a byte of it is read; a body without a length
  (chunked) is counted as it arrives and refused as soon as it passes the
  limit. Nothing reaches the JSON parser that was not counted;
- a request under ``/v1/`` is authenticated (``gate``) before its body is read,
  so a request without a valid token costs a header and a token lookup, never
  the reading or parsing of its body;
- at most ``max_bodies`` authenticated requests with a body are read and
  handled at once (503 ``unavailable`` with Retry-After beyond), so memory for
  bodies and their parsed form is bounded however many connections send them;
  one token holds at most a quarter of them (429 ``rate_limited`` beyond), so
  that one caller cannot lock every other out;
  a body must arrive within ``BODY_SECONDS``, and only ``/v1/`` reads bodies,
  so nobody without a token can hold a slot;
- every response, errors and the OpenAPI document included, carries the
  security headers: no sniffing, no framing, no referrer, no caching of API
  answers, and a Content-Security-Policy that lets the owner page load only
  its own files and everything else load nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.errors import BridgeError, Malformed, RateLimited, TooLarge, Unavailable

#: How long a request's body may take to arrive: a body trickled in a byte at a time
#: would otherwise hold one of the few body slots for as long as its sender likes.
BODY_SECONDS: Final = 10.0

#: Authenticates a request from its headers (``scope``), before its body is
#: read, and returns whose share of the body slots it takes (the token's id);
#: raises a BridgeError (401, 503) to refuse it.
Gate = Callable[[Scope], Awaitable[str]]

#: Turns a refusal into the API's ``{"code", "message"}`` answer.
Render = Callable[[BridgeError], Response]

# The owner page runs no inline script and loads nothing from elsewhere; API
# answers are data and may load nothing at all. Neither may be framed. The pages'
# scripts send every form themselves: a form the browser submitted (Enter before a
# slow script ran) would put the token typed into it in the address and the logs.
_PAGE_POLICY: Final = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_DATA_POLICY: Final = (
    "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_COMMON: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The headers every response to ``path`` carries."""
    page = path == "/" or path.startswith("/static/")
    policy = _PAGE_POLICY if page else _DATA_POLICY
    # The page's files may be revalidated; an API answer (devices, owners,
    # audit entries) must not stay in a browser's or a proxy's cache.
    cache = b"no-cache" if path.startswith("/static/") else b"no-store"
    return [
        *_COMMON,
        (b"content-security-policy", policy.encode()),
        (b"cache-control", cache),
    ]


class RequestGuard:
    """The ASGI middleware; ``gate`` runs for paths under ``/v1/``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        gate: Gate,
        render: Render,
        max_bodies: int = 32,
    ) -> None:
        self._app = app
        self._limit = max_body_bytes
        self._gate = gate
        self._render = render
        self._max_bodies = max_bodies
        self._bodies = 0  # requests with a body being read or handled now
        # A quarter each: one token trickling bodies would otherwise hold every slot,
        # and every other caller's claim would be answered 503 for as long as it liked.
        self._share = max(1, max_bodies // 4)
        self._held: dict[str, int] = {}  # token id -> its requests among _bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False
        extra = security_headers(scope["path"])

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {name.lower() for name, _ in message.get("headers", ())}
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        *((k, v) for k, v in extra if k not in present),
                    ],
                }
            await send(message)

        holder: str | None = None  # whose body slot this request holds, if it holds one
        try:
            try:
                body, holder = await self._admit(scope, receive)
            except BridgeError as refusal:
                await self._render(refusal)(scope, receive, send_with_headers)
                return
            if body is None:
                return  # the client went away while sending (its slot is given back)
            await self._app(scope, body, send_with_headers)
        except Exception:
            if not started:
                # Starlette's own 500 page would leave the guard without its
                # headers and the API's error shape; the error is re-raised
                # for the server to log with its traceback.
                answer = JSONResponse(
                    {
                        "code": "internal",
                        "message": "The bridge failed to answer this request; "
                        "the error is in its log.",
                    },
                    status_code=500,
                )
                await answer(scope, receive, send_with_headers)
            raise
        finally:
            if holder is not None:
                self._release(holder)

    async def _admit(self, scope: Scope, receive: Receive) -> tuple[Receive | None, str | None]:
        """The request's ``receive``, its body read within the limit, and the token
        whose body slot it holds (None if it holds none); or a refusal."""
        headers = Headers(scope=scope)
        declared = _content_length(headers)
        if declared is not None and declared > self._limit:
            raise self._too_large()
        if not scope["path"].startswith("/v1/"):
            # Only the API takes bodies: elsewhere (the page, its files, unknown paths)
            # nothing reads one, so a stranger's slow body holds no slot.
            return receive, None
        holder = await self._gate(scope)
        if not declared and "transfer-encoding" not in headers:
            return receive, None  # no body: nothing to read or count
        if self._held.get(holder, 0) >= self._share:
            raise RateLimited(
                f"This token already has {self._share} requests with a body in progress, "
                "the most one token may have at once; send the next when one is answered.",
                retry_after=1,
            )
        if self._bodies >= self._max_bodies:
            raise Unavailable(
                "The API is handling as many requests with a body as it takes at once; "
                "try again in a second.",
                retry_after=1,
            )
        self._bodies += 1  # released by __call__ when the request is answered
        self._held[holder] = self._held.get(holder, 0) + 1
        admitted = False
        try:
            async with asyncio.timeout(BODY_SECONDS):
                body = await self._read(receive)
        except TimeoutError:
            raise Malformed(
                f"The request body did not arrive within {BODY_SECONDS:g} seconds; send it at once."
            ) from None
        else:
            admitted = body is not None
            return body, (holder if admitted else None)
        finally:
            # Whatever ends the reading early (too slow, too large, the task cancelled,
            # the client gone) gives the slot back here: __call__ releases only the
            # slots of the bodies it was handed.
            if not admitted:
                self._release(holder)

    def _release(self, holder: str) -> None:
        self._bodies -= 1
        left = self._held[holder] - 1
        if left:
            self._held[holder] = left
        else:
            del self._held[holder]

    async def _read(self, receive: Receive) -> Receive | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return _replay(b"".join(chunks), receive)

    def _too_large(self) -> TooLarge:
        return TooLarge(
            f"The request body is larger than {self._limit:,} bytes, the most this API reads; "
            "send fewer rows per request."
        )


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # the HTTP server refuses a malformed length before we run


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the buffered body over once, then waits as the original."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
