"""Models: register one, read one, list one's devices (vendors and administrators)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from bridge.errors import Forbidden
from bridge.tokens import Role
from bridge.web.bodies import DevicePage, Model, ModelRequest, device_body, model_body
from bridge.web.context import Ctx
from bridge.web.params import AfterQuery, ModelPath, OwnerQuery, StateQuery, VendorPath
from bridge.web.refusals import error_responses

router = APIRouter(prefix="/v1")


@router.post(
    "/models",
    response_model=Model,
    status_code=201,
    responses=error_responses(403, 409, body=True),
    tags=["vendor"],
)
async def add_model(body: ModelRequest, ctx: Ctx) -> Model:
    """Register a model of my vendor (an administrator names the vendor).

    The name's invisible characters and the pattern's RE2 syntax are checked when the
    model is registered (422 ``malformed``)."""
    ctx.vendor_scope("register models")
    if ctx.role is Role.VENDOR:
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
    responses=error_responses(403, 404),
    tags=["vendor"],
)
async def show_model(vendor: VendorPath, model: ModelPath, ctx: Ctx) -> Model:
    """One of my models."""
    ctx.vendor_scope("read models")
    return model_body(await ctx.own_model(vendor, model))


@router.get(
    "/models/{vendor}/{model}/devices",
    response_model=DevicePage,
    responses=error_responses(403, 404),
    tags=["vendor"],
)
async def list_model_devices(
    vendor: VendorPath,
    model: ModelPath,
    ctx: Ctx,
    *,
    state: StateQuery = None,
    owner: OwnerQuery = None,
    after: AfterQuery = None,
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
