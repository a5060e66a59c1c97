"""How a refusal becomes an HTTP answer: status, ``{"code", "message"}`` body, headers.

The same codes and sentences as the command line; the status of each code is in
:data:`STATUS`. Refusals by FastAPI itself (a body or parameter the document does not
allow, an unknown path) get the same shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from bridge.errors import BridgeError, RateLimited, RequestError, Unavailable
from bridge.web.bodies import ErrorBody

#: HTTP status of each error code; a code missing here is a refusal of the
#: device's current state, hence 409.
STATUS: dict[str, int] = {
    "malformed": 422,
    "invalid_identifier": 422,
    "unknown_model": 404,
    "not_approved": 404,
    "not_found": 404,
    "unauthorized": 401,
    "forbidden": 403,
    "not_owner": 403,
    "rate_limited": 429,
    "too_large": 413,
    "unavailable": 503,
}


def error_responses(*codes: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: every status it may answer besides its success.

    Every route may answer 401 (token), 422 (parameters) and 503 (database); a route
    that reads a JSON body also 400 (not JSON at all), 413 (larger than the limit) and
    429 (its token already has its share of the bodies being read).
    """
    common = (401, 422, 503, *((400, 413, 429) if body else ()))
    return {status: {"model": ErrorBody} for status in sorted({*common, *codes})}


def error_body(exc: BridgeError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, RequestError) and exc.suggestion:
        body["suggestion"] = exc.suggestion
    if isinstance(exc, RequestError) and exc.support_contact:
        body["support_contact"] = exc.support_contact
    if isinstance(exc, RateLimited | Unavailable):
        body["retry_after"] = exc.retry_after
    return body


def render_error(exc: BridgeError) -> Response:
    """The JSON answer to a refusal, with its status and headers."""
    status = STATUS.get(exc.code, 409 if isinstance(exc, RequestError) else 500)
    headers = {}
    if isinstance(exc, RateLimited | Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.code == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


async def on_bridge_error(request: Request, exc: BridgeError) -> Response:
    return render_error(exc)


async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    message = f"The field {where!r} is invalid: {first.get('msg', 'not understood')}."
    return JSONResponse({"code": "malformed", "message": message}, status_code=422)


def _allowed_methods(request: Request) -> str:
    # Starlette's 405 names the methods of the first route whose path matched; a path
    # served by two routes (GET and PUT of a model's support contact) needs them all.
    # The API's routers are read from the app's state (create_app puts them there).
    methods: set[str] = set()
    for router in getattr(request.app.state, "routers", ()):
        for route in router.routes:
            if isinstance(route, APIRoute):
                match, _ = route.matches(request.scope)
                if match is not Match.NONE and route.methods:
                    methods |= route.methods
    return ", ".join(sorted(methods))


async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers["Allow"] = allowed
    code = "not_found" if exc.status_code == 404 else "malformed"
    message = (
        "There is no such API endpoint."
        if exc.status_code == 404
        else f"The request was refused: {exc.detail}."
    )
    return JSONResponse(
        {"code": code, "message": message}, status_code=exc.status_code, headers=headers
    )
