"""The HTTP API and the reference owner page; the only module importing FastAPI and uvicorn.

Each route is a thin layer over :class:`bridge.admin.Admin`, like the command
line: the same operations, the same error codes and sentences, as JSON
``{"code": ..., "message": ...}`` with a fitting HTTP status. Who may do what
comes from the bearer token (:mod:`bridge.tokens`):

- an **owner** claims, lists, shows, releases and re-enables only their own
  devices; another owner's device is answered 404 exactly like a device that
  does not exist, so the API does not say whose it is;
- a **vendor** manages only the models whose ``vendor`` is its name; another
  vendor's model is answered like an unregistered one (404 ``unknown_model``);
- an **administrator** may do what vendors do for every vendor, and transfer.

Failed claims are throttled per token (``rate_limited``, 429 with Retry-After),
so that "did you mean ...?" cannot be used to enumerate approved numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge import __version__, identifiers
from bridge.admin import Admin
from bridge.config import Settings
from bridge.errors import (
    BridgeError,
    ConfigError,
    Forbidden,
    NotApproved,
    NotFound,
    RateLimited,
    RequestError,
    Unavailable,
    UnknownModel,
)
from bridge.records import DeviceRow, ModelRow
from bridge.store import Store
from bridge.tokens import Principal, Role, authenticate

log = logging.getLogger("bridge.api")

STATIC_DIR = Path(__file__).resolve().parent / "static"

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
    "unavailable": 503,
}


# -- request and response bodies ------------------------------------------------


def _printable(value: str) -> str:
    # PostgreSQL text cannot hold NUL and asyncpg cannot encode lone surrogates:
    # refuse them here as a bad request instead of failing in the driver.
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError("must not contain control characters")
    return value


Name = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_printable)]
Number = Annotated[
    str,
    Field(min_length=1, max_length=identifiers.MAX_LENGTH, description="as printed on the label"),
    AfterValidator(_printable),
]
VendorPath = Annotated[str, PathParam(min_length=1, max_length=64), AfterValidator(_printable)]
ModelPath = Annotated[str, PathParam(min_length=1, max_length=64), AfterValidator(_printable)]
NumberPath = Annotated[
    str, PathParam(min_length=1, max_length=identifiers.MAX_LENGTH), AfterValidator(_printable)
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorBody(_Body):
    code: str = Field(description="the protocol error code, as the CLI prints it")
    message: str = Field(description="one sentence for a person")
    suggestion: str | None = Field(
        default=None, description='the identifier a "did you mean ...?" refers to'
    )
    retry_after: int | None = Field(default=None, description="seconds, with 429 and 503")


class Me(_Body):
    token_id: str
    role: str
    subject: str | None


class ClaimRequest(_Body):
    vendor: Name
    model: Name
    identifier: Number


class Device(_Body):
    vendor: str
    model: str
    identifier: str = Field(description="canonical form, shown the way people read it")
    state: str = Field(description="approved, claimed, activated or revoked")
    owner: str | None
    window_ends_at: datetime | None
    window_seconds_left: int | None = Field(description="of the open activation window")
    activated_at: datetime | None
    approved_at: datetime


class ClaimResponse(_Body):
    message: str
    already_yours: bool
    device: Device


class DeviceList(_Body):
    devices: list[Device]


class ModelRequest(_Body):
    vendor: Name | None = Field(
        default=None, description="an administrator names the vendor; a vendor token implies it"
    )
    model: Name
    kind: identifiers.Kind
    pattern: Annotated[str, Field(max_length=512), AfterValidator(_printable)] | None = None
    window_seconds: int = Field(default=86_400, ge=1, le=366 * 86_400)
    claim_required: bool = True


class Model(_Body):
    vendor: str
    model: str
    kind: str
    pattern: str | None
    window_seconds: int
    claim_required: bool


class ApproveRequest(_Body):
    identifiers: list[Number] = Field(min_length=1, max_length=10_000)


class ApproveResponse(_Body):
    added: int
    already: int


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in (401, 422, 503, *codes)}


# -- mapping between records and bodies -------------------------------------------


def _seconds_left(ends: datetime | None, now: datetime) -> int | None:
    return None if ends is None else max(0, int((ends - now).total_seconds()))


def _device(row: DeviceRow, kind: str) -> Device:
    return Device(
        vendor=row.vendor,
        model=row.model,
        identifier=identifiers.display(kind, row.identifier),
        state=row.state,
        owner=row.owner,
        window_ends_at=row.window_ends_at,
        window_seconds_left=_seconds_left(row.window_ends_at, datetime.now(UTC)),
        activated_at=row.activated_at,
        approved_at=row.approved_at,
    )


def _model(row: ModelRow) -> Model:
    return Model(
        vendor=row.vendor,
        model=row.model,
        kind=row.kind,
        pattern=row.pattern,
        window_seconds=row.window_seconds,
        claim_required=row.claim_required,
    )


def error_body(exc: BridgeError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, RequestError) and exc.suggestion:
        body["suggestion"] = exc.suggestion
    if isinstance(exc, RateLimited | Unavailable):
        body["retry_after"] = exc.retry_after
    return body


# -- the application --------------------------------------------------------------


class _Context:
    """What every request needs: the store, the settings, and who is asking."""

    def __init__(self, store: Store, settings: Settings, principal: Principal) -> None:
        self.store = store
        self.settings = settings
        self.principal = principal
        self.admin = Admin(store, actor=str(principal))

    def owner(self, doing: str) -> str:
        """The owner name of an owner token, or Forbidden."""
        if self.principal.role is not Role.OWNER or self.principal.subject is None:
            raise Forbidden(f"Only an owner's token may {doing}.")
        return self.principal.subject

    def vendor_scope(self, doing: str) -> None:
        if self.principal.role is Role.OWNER:
            raise Forbidden(f"Only a vendor's or an administrator's token may {doing}.")

    def admin_only(self, doing: str) -> None:
        if self.principal.role is not Role.ADMIN:
            raise Forbidden(f"Only an administrator's token may {doing}.")

    async def own_model(self, vendor: str, model: str) -> ModelRow:
        """A model the token's vendor may manage; anyone else's looks unregistered."""
        if self.principal.role is Role.VENDOR and vendor != self.principal.subject:
            raise UnknownModel(
                f"The model {vendor}/{model} is not registered; check the vendor and model names."
            )
        return await self.admin.model(vendor, model)


_bearer = HTTPBearer(auto_error=False, description="`bridge token create` prints one")


async def _context(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> _Context:
    store: Store = request.app.state.store
    settings: Settings = request.app.state.settings
    token = credentials.credentials if credentials else None
    return _Context(store, settings, await authenticate(store, token))


Ctx = Annotated[_Context, Depends(_context)]

router = APIRouter(prefix="/v1")


def create_app(store: Store, settings: Settings) -> FastAPI:
    """The API and the owner page on an open store."""
    app = FastAPI(
        title="provisioning-bridge",
        version=__version__,
        description="Owners claim devices; vendors approve them. Errors are "
        '`{"code", "message"}` with the codes of the command line.',
    )
    app.state.store = store
    app.state.settings = settings
    app.add_exception_handler(BridgeError, _bridge_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.include_router(router)
    app.add_api_route("/", _page, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def _page() -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


async def _bridge_error(request: Request, exc: BridgeError) -> Response:
    status = STATUS.get(exc.code, 409 if isinstance(exc, RequestError) else 500)
    headers = {}
    if isinstance(exc, RateLimited | Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.code == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    message = f"The field {where!r} is invalid: {first.get('msg', 'not understood')}."
    return JSONResponse({"code": "malformed", "message": message}, status_code=422)


async def _http(request: Request, exc: StarletteHTTPException) -> Response:
    code = "not_found" if exc.status_code == 404 else "malformed"
    message = (
        "There is no such API endpoint."
        if exc.status_code == 404
        else f"The request was refused: {exc.detail}."
    )
    return JSONResponse(
        {"code": code, "message": message}, status_code=exc.status_code, headers=exc.headers
    )


# -- everyone ---------------------------------------------------------------


@router.get("/me", response_model=Me, responses=_error_responses(), tags=["account"])
async def me(ctx: Ctx) -> Me:
    """Who the token speaks for."""
    p = ctx.principal
    return Me(token_id=p.token_id, role=p.role.value, subject=p.subject)


# -- owners -----------------------------------------------------------------


@router.post(
    "/claims",
    response_model=ClaimResponse,
    responses=_error_responses(403, 404, 409, 429),
    tags=["owner"],
)
async def claim(body: ClaimRequest, ctx: Ctx) -> ClaimResponse:
    """Add a device to my account by the number on its label; opens its activation window.

    Failed claims count against the token (429 ``rate_limited`` past the limit).
    """
    owner = ctx.owner("claim devices")
    token_id = ctx.principal.token_id
    wait = await ctx.store.take_claim_attempt(
        token_id,
        limit=ctx.settings.api_claim_failures,
        window_seconds=ctx.settings.api_claim_window_seconds,
    )
    if wait:
        raise RateLimited(
            f"Too many failed attempts to add a device with this token; "
            f"try again in {wait} seconds.",
            retry_after=wait,
        )
    try:
        result = await ctx.admin.claim(body.vendor, body.model, body.identifier, owner=owner)
    except RequestError:
        raise  # a failure: it stays counted
    except BaseException:
        # Not the caller's fault (e.g. the database went away): do not count it.
        with contextlib.suppress(Unavailable):
            await ctx.store.give_back_claim_attempt(token_id)
        raise
    await ctx.store.give_back_claim_attempt(token_id)
    model = await ctx.admin.model(body.vendor, body.model)
    row = await ctx.admin.show(body.vendor, body.model, result.identifier)
    device = _device(row, model.kind)
    what = identifiers.kind_name(model.kind)
    if result.already_yours:
        message = f"The {what} {device.identifier} is already in your account."
    elif device.state == "claimed":
        message = (
            f"The {what} {device.identifier} ({model.vendor}/{model.model}) is now in your "
            "account; switch the device on to activate it before its window closes."
        )
    else:
        message = f"The {what} {device.identifier} is now in your account."
    return ClaimResponse(message=message, already_yours=result.already_yours, device=device)


@router.get(
    "/devices",
    response_model=DeviceList,
    responses=_error_responses(403),
    tags=["owner"],
)
async def my_devices(ctx: Ctx) -> DeviceList:
    """The devices in my account (at most 500), with the time left in each activation window."""
    owner = ctx.owner("list their devices")
    rows = await ctx.store.owner_devices(owner, limit=500)
    return DeviceList(devices=[_device(row, kind) for row, kind in rows])


@router.get(
    "/devices/{vendor}/{model}/{identifier}",
    response_model=Device,
    responses=_error_responses(404),
    tags=["owner", "vendor"],
)
async def show_device(
    vendor: VendorPath, model: ModelPath, identifier: NumberPath, ctx: Ctx
) -> Device:
    """One device: an owner sees only their own; a vendor only its own models'."""
    row_model = await ctx.own_model(vendor, model)
    if ctx.principal.role is Role.OWNER:
        return await _owned_device(ctx, row_model, identifier)
    return _device(await ctx.admin.show(vendor, model, identifier), row_model.kind)


# -- vendors and administrators ---------------------------------------------


@router.post(
    "/models",
    response_model=Model,
    status_code=201,
    responses=_error_responses(403, 409),
    tags=["vendor"],
)
async def add_model(body: ModelRequest, ctx: Ctx) -> Model:
    """Register a model of my vendor (an administrator names the vendor)."""
    ctx.vendor_scope("register models")
    if ctx.principal.role is Role.VENDOR:
        assert ctx.principal.subject is not None
        if body.vendor not in (None, ctx.principal.subject):
            raise Forbidden(
                f"A token of the vendor {ctx.principal.subject} registers only its own models."
            )
        vendor = ctx.principal.subject
    elif body.vendor is None:
        raise Forbidden("An administrator must name the vendor of a new model.")
    else:
        vendor = body.vendor
    row = await ctx.admin.add_model(
        vendor,
        body.model,
        kind=body.kind.value,
        pattern=body.pattern,
        window_seconds=body.window_seconds,
        claim_required=body.claim_required,
    )
    return _model(row)


@router.get(
    "/models/{vendor}/{model}",
    response_model=Model,
    responses=_error_responses(403, 404),
    tags=["vendor"],
)
async def show_model(vendor: VendorPath, model: ModelPath, ctx: Ctx) -> Model:
    """One of my models."""
    ctx.vendor_scope("read models")
    return _model(await ctx.own_model(vendor, model))


@router.post(
    "/models/{vendor}/{model}/approvals",
    response_model=ApproveResponse,
    responses=_error_responses(403, 404),
    tags=["vendor"],
)
async def approve(
    vendor: VendorPath, model: ModelPath, body: ApproveRequest, ctx: Ctx
) -> ApproveResponse:
    """Approve identifiers (up to 10,000 per request); all or nothing on a bad one."""
    ctx.vendor_scope("approve devices")
    await ctx.own_model(vendor, model)
    report = await ctx.admin.approve(vendor, model, body.identifiers)
    return ApproveResponse(added=report.added, already=report.already)


#: The page runs no inline script and loads nothing from elsewhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _owned_device(ctx: _Context, model: ModelRow, identifier: str) -> Device:
    """The owner's own device; anything else is 404 with one sentence for every case."""
    owner = ctx.owner("see devices")
    try:
        row = await ctx.admin.show(model.vendor, model.model, identifier)
    except NotApproved:
        row = None
    if row is None or row.owner != owner:
        canonical = identifiers.normalize(model.kind, identifier, model.pattern)
        raise NotFound(
            f"There is no {identifiers.kind_name(model.kind)} "
            f"{identifiers.display(model.kind, canonical)} of {model.vendor}/{model.model} "
            "in your account."
        )
    return _device(row, model.kind)


# -- serving ----------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller stops it through an event."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_http(
    app: FastAPI,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` until ``stop`` is set; ``ready`` is set once it listens."""
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
        )
    )
    # Bind here rather than in uvicorn, which answers a port in use with sys.exit.
    sock = _listen(host, port)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="bridge-api-http")
    try:
        while not server.started and not serving.done():  # noqa: ASYNC110 (a flag, no event)
            await asyncio.sleep(0.02)
        if not server.started:
            await serving
            raise ConfigError(f"the HTTP API stopped before listening on {host}:{port}")
        log.info(
            "HTTP API listening",
            extra={"event": "api_listening", "url": f"http://{host}:{port}/"},
        )
        if ready is not None:
            ready.set()
        stopping = asyncio.create_task(stop.wait(), name="bridge-api-stop")
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        server.should_exit = True
        async with asyncio.timeout(15):
            await asyncio.wait({serving})
        sock.close()
    serving.result()  # a crash of the server is a bug: let it be seen


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"the HTTP API cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock
