"""The HTTP API and the reference owner page; the only module importing FastAPI.

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
Bodies live in :mod:`bridge.api_bodies`; :mod:`bridge.webserver` serves the app;
:mod:`bridge.api_guard` limits bodies, checks the token before a body is read,
and adds the security headers to every answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from bridge import __version__, approval_file, identifiers
from bridge.admin import STATES, Admin
from bridge.api_bodies import (
    BULK_MAX_IDENTIFIERS,
    ActionResponse,
    ApproveRequest,
    ApproveResponse,
    AuditEntryBody,
    AuditList,
    BulkApproveRequest,
    BulkApproveResponse,
    ClaimRequest,
    ClaimResponse,
    Device,
    DeviceList,
    DevicePage,
    ErrorBody,
    Me,
    Model,
    ModelRequest,
    Refused,
    TransferRequest,
    UnapproveRequest,
    UnapproveResponse,
    device_body,
    model_body,
    printable,
)
from bridge.api_guard import RequestGuard
from bridge.config import Settings
from bridge.errors import (
    BridgeError,
    Forbidden,
    NotApproved,
    NotFound,
    RateLimited,
    RequestError,
    TooLarge,
    Unavailable,
    UnknownModel,
)
from bridge.records import ModelRow
from bridge.store import Store
from bridge.tokens import Principal, Role, authenticate

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
    "too_large": 413,
    "unavailable": 503,
}


def _printable_or_none(value: str | None) -> str | None:
    return None if value is None else printable(value)


_Printable = AfterValidator(_printable_or_none)


def _instant(value: datetime | None) -> datetime | None:
    # A time without a zone is UTC; one that leaves the calendar in UTC is a bad
    # request here rather than an overflow in the driver.
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is outside the years 1 to 9999 in UTC") from exc


# Path parameters: a serial number containing "/" cannot be named in a path.
VendorPath = Annotated[str, PathParam(min_length=1, max_length=64), AfterValidator(printable)]
ModelPath = Annotated[str, PathParam(min_length=1, max_length=64), AfterValidator(printable)]
NumberPath = Annotated[
    str, PathParam(min_length=1, max_length=identifiers.MAX_LENGTH), AfterValidator(printable)
]


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in (401, 422, 503, *codes)}


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
        # The same Admin as the command line's, with the settings that reach the broker
        # (revoke, release and transfer close the device's login there) and the role
        # that asks (an owner cannot undo a vendor's revoke).
        self.admin = Admin(store, settings=settings, actor=str(principal), role=principal.role)

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
    # The guard authenticated the request before reading its body (_gate).
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        token = credentials.credentials if credentials else None
        principal = await authenticate(store, token)
    return _Context(store, settings, principal)


def _gate(store: Store) -> Callable[[Scope], Awaitable[None]]:
    """Authenticate from the headers alone, as HTTPBearer reads them, before any body."""

    async def gate(scope: Scope) -> None:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        principal = await authenticate(store, bearer)
        scope.setdefault("state", {})["principal"] = principal

    return gate


Ctx = Annotated[_Context, Depends(_context)]

router = APIRouter(prefix="/v1")


def create_app(store: Store, settings: Settings) -> FastAPI:
    """The API and the owner page on an open store."""
    app = FastAPI(
        title="provisioning-bridge",
        version=__version__,
        description="Owners claim devices; vendors approve them. Errors are "
        '`{"code", "message"}` with the codes of the command line.',
        # Swagger UI and ReDoc load scripts from a CDN into the page where a
        # token is typed; the OpenAPI document at /openapi.json stays.
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store
    app.state.settings = settings
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.api_max_body_bytes,
        gate=_gate(store),
        render=render_error,
    )
    app.add_exception_handler(BridgeError, _bridge_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.include_router(router)
    app.add_api_route("/", _page, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def _page() -> Response:
    return FileResponse(STATIC_DIR / "index.html")


async def _bridge_error(request: Request, exc: BridgeError) -> Response:
    return render_error(exc)


def render_error(exc: BridgeError) -> Response:
    """The JSON answer to a refusal, with its status and headers."""
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
    device = device_body(row, model.kind)
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
    return DeviceList(devices=[device_body(row, kind) for row, kind in rows])


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
    return device_body(await ctx.admin.show(vendor, model, identifier), row_model.kind)


@router.post(
    "/devices/{vendor}/{model}/{identifier}/release",
    response_model=ActionResponse,
    responses=_error_responses(403, 404, 409),
    tags=["owner"],
)
async def release(
    vendor: VendorPath, model: ModelPath, identifier: NumberPath, ctx: Ctx
) -> ActionResponse:
    """Give a device of mine up: its key stops working and anyone may claim it."""
    owner = ctx.owner("release devices")
    row = await ctx.admin.model(vendor, model)
    await _owned_device(ctx, row, identifier)
    result = await ctx.admin.release(vendor, model, identifier, owner=owner)
    return ActionResponse(
        message=f"The {_named(row, result.identifier)} is no longer in your account; its key "
        "stopped working and anyone may now claim it.",
        device=await _device_now(ctx, row, result.identifier),
    )


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
        plaintext_keys=body.plaintext_keys,
    )
    return model_body(row)


@router.get(
    "/models/{vendor}/{model}",
    response_model=Model,
    responses=_error_responses(403, 404),
    tags=["vendor"],
)
async def show_model(vendor: VendorPath, model: ModelPath, ctx: Ctx) -> Model:
    """One of my models."""
    ctx.vendor_scope("read models")
    return model_body(await ctx.own_model(vendor, model))


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


@router.post(
    "/models/{vendor}/{model}/approvals/bulk",
    response_model=BulkApproveResponse,
    responses=_error_responses(403, 404, 413),
    tags=["vendor"],
)
async def bulk_approve(
    vendor: VendorPath, model: ModelPath, body: BulkApproveRequest, ctx: Ctx
) -> BulkApproveResponse:
    """Approve rows as in an approval file (ranges ``FIRST..LAST`` too); bad rows are
    reported and the others loaded, in one transaction. ``dry_run`` writes nothing.

    At most 10,000 rows and 1,000,000 identifiers in all (413 ``too_large``)."""
    ctx.vendor_scope("approve devices")
    row = await ctx.own_model(vendor, model)
    kind = identifiers.Kind(row.kind)
    # Counted from the ranges' ends before anything is expanded or loaded.
    total = sum(approval_file.row_size(kind, row.pattern, text) for text in body.rows)
    if total > BULK_MAX_IDENTIFIERS:
        raise TooLarge(
            f"The rows hold {total:,} identifiers, and one request approves at most "
            f"{BULK_MAX_IDENTIFIERS:,}; split them over several requests."
        )
    report = await ctx.admin.approve_rows(
        vendor, model, enumerate(body.rows, start=1), dry_run=body.dry_run, source="api"
    )
    return BulkApproveResponse(
        added=report.added,
        already=report.already,
        duplicates=report.duplicates,
        refused=[Refused(row=r.line, text=r.text, reason=r.reason) for r in report.refused],
        refused_total=report.refused_total,
        dry_run=report.dry_run,
    )


@router.post(
    "/models/{vendor}/{model}/unapprove",
    response_model=UnapproveResponse,
    responses=_error_responses(403, 404, 409),
    tags=["vendor"],
)
async def unapprove(
    vendor: VendorPath, model: ModelPath, body: UnapproveRequest, ctx: Ctx
) -> UnapproveResponse:
    """Take identifiers off the approval list; devices in use need ``force`` (else 409)."""
    ctx.vendor_scope("unapprove devices")
    row = await ctx.own_model(vendor, model)
    report = await ctx.admin.unapprove(vendor, model, body.identifiers, force=body.force)
    return UnapproveResponse(
        removed=[identifiers.display(row.kind, i) for i in report.removed],
        missing=[identifiers.display(row.kind, i) for i in report.missing],
    )


@router.get(
    "/models/{vendor}/{model}/devices",
    response_model=DevicePage,
    responses=_error_responses(403, 404),
    tags=["vendor"],
)
async def list_model_devices(
    vendor: VendorPath,
    model: ModelPath,
    ctx: Ctx,
    *,
    state: Annotated[str | None, Query(description=", ".join(STATES)), _Printable] = None,
    owner: Annotated[str | None, Query(max_length=128), _Printable] = None,
    after: Annotated[
        str | None, Query(max_length=identifiers.MAX_LENGTH, description="next_after"), _Printable
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DevicePage:
    """One page of a model's devices in identifier order (never a key)."""
    ctx.vendor_scope("list a model's devices")
    row = await ctx.own_model(vendor, model)
    rows = await ctx.admin.list_devices(
        vendor, model, state=state, owner=owner, after=after, limit=limit
    )
    devices = [device_body(r, row.kind) for r in rows]
    return DevicePage(
        devices=devices, next_after=devices[-1].identifier if len(devices) == limit else None
    )


@router.post(
    "/devices/{vendor}/{model}/{identifier}/revoke",
    response_model=ActionResponse,
    responses=_error_responses(403, 404, 409),
    tags=["vendor"],
)
async def revoke(
    vendor: VendorPath, model: ModelPath, identifier: NumberPath, ctx: Ctx
) -> ActionResponse:
    """The device's key stops being valid now; it cannot activate until re-enabled."""
    ctx.vendor_scope("revoke keys")
    row = await ctx.own_model(vendor, model)
    result = await ctx.admin.revoke(vendor, model, identifier)
    return ActionResponse(
        message=f"The key of the {_named(row, result.identifier)} was revoked; the device "
        "cannot activate until it is re-enabled.",
        device=await _device_now(ctx, row, result.identifier),
    )


@router.get(
    "/audit", response_model=AuditList, responses=_error_responses(403, 404), tags=["vendor"]
)
async def audit(
    ctx: Ctx,
    *,
    vendor: Annotated[str | None, Query(max_length=64), _Printable] = None,
    model: Annotated[str | None, Query(max_length=64), _Printable] = None,
    identifier: Annotated[str | None, Query(max_length=identifiers.MAX_LENGTH), _Printable] = None,
    owner: Annotated[str | None, Query(max_length=128), _Printable] = None,
    client_id: Annotated[str | None, Query(max_length=128), _Printable] = None,
    code: Annotated[str | None, Query(max_length=64), _Printable] = None,
    since: Annotated[datetime | None, AfterValidator(_instant)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditList:
    """Activation attempts and administrative actions, newest first (never a key).
    A vendor's token reads only its own models' entries."""
    ctx.vendor_scope("read the audit log")
    if ctx.principal.role is Role.VENDOR:
        if vendor not in (None, ctx.principal.subject):
            raise Forbidden(
                f"A token of the vendor {ctx.principal.subject} reads only its own audit entries."
            )
        vendor = ctx.principal.subject
    records = await ctx.admin.audit(
        vendor=vendor,
        model=model,
        identifier=identifier,
        owner=owner,
        client_id=client_id,
        code=code,
        since=since,
        limit=limit,
    )
    return AuditList(entries=[AuditEntryBody(**asdict(r)) for r in records])


# -- owners, vendors and administrators: re-enable; administrators: transfer -------


@router.post(
    "/devices/{vendor}/{model}/{identifier}/reenable",
    response_model=ActionResponse,
    responses=_error_responses(403, 404, 409),
    tags=["owner", "vendor"],
)
async def reenable(
    vendor: VendorPath, model: ModelPath, identifier: NumberPath, ctx: Ctx
) -> ActionResponse:
    """Open a new activation window (after a factory reset); the next activation
    issues a new key. An owner re-enables only their own devices."""
    row = await ctx.own_model(vendor, model)
    if ctx.principal.role is Role.OWNER:
        await _owned_device(ctx, row, identifier)
    result = await ctx.admin.reenable(vendor, model, identifier)
    return ActionResponse(
        message=f"A new activation window is open for the {_named(row, result.identifier)} "
        f"for {_span(row.window_seconds)}; switch the device on to activate it again.",
        device=await _device_now(ctx, row, result.identifier),
    )


@router.post(
    "/devices/{vendor}/{model}/{identifier}/transfer",
    response_model=ActionResponse,
    responses=_error_responses(403, 404, 409),
    tags=["admin"],
)
async def transfer(
    vendor: VendorPath, model: ModelPath, identifier: NumberPath, body: TransferRequest, ctx: Ctx
) -> ActionResponse:
    """Move a claimed device to another owner (audited). The previous owner's key is
    revoked (it no longer opens the broker) and the new owner's activation window opens."""
    ctx.admin_only("transfer devices")
    row = await ctx.admin.model(vendor, model)
    result = await ctx.admin.transfer(vendor, model, identifier, to=body.to)
    then = (
        "it stays revoked"
        if result.previous_state == "revoked"
        else "its old key was revoked and it activates again for a new one"
    )
    return ActionResponse(
        message=f"The {_named(row, result.identifier)} now belongs to {body.to} "
        f"(it was {result.previous_owner}'s); {then}.",
        device=await _device_now(ctx, row, result.identifier),
    )


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
    return device_body(row, model.kind)


async def _device_now(ctx: _Context, model: ModelRow, canonical: str) -> Device:
    return device_body(await ctx.admin.show(model.vendor, model.model, canonical), model.kind)


def _named(model: ModelRow, canonical: str) -> str:
    return (
        f"{identifiers.kind_name(model.kind)} {identifiers.display(model.kind, canonical)} "
        f"({model.vendor}/{model.model})"
    )


def _span(seconds: int) -> str:
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"
