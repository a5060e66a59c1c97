"""Devices: claiming one, an owner's list, one device, and its lifecycle (release, revoke,
re-enable, transfer). Each transition is Admin's; a route checks who may ask and says
what happened in one sentence. Every action takes an optional ``reason``, kept in its
audit row; release, revoke and re-enable need no body at all.

Each route looks its model up once and hands the row on (:meth:`Admin.device_of`), so
a request reads the model at most twice (once more inside the transition itself).
"""

from __future__ import annotations

from fastapi import APIRouter

from bridge import identifiers
from bridge.errors import NotFound
from bridge.records import DeviceRow, ModelRow
from bridge.tokens import Role
from bridge.web.bodies import (
    ActionRequest,
    ActionResponse,
    ClaimRequest,
    ClaimResponse,
    Device,
    DeviceList,
    TransferRequest,
    device_body,
)
from bridge.web.context import Caller, Ctx
from bridge.web.params import ModelPath, NumberPath, VendorPath
from bridge.web.refusals import error_responses

router = APIRouter(prefix="/v1")

# -- owners -----------------------------------------------------------------


@router.post(
    "/claims",
    response_model=ClaimResponse,
    responses=error_responses(403, 404, 409, 429, body=True),
    tags=["owner"],
)
async def claim(body: ClaimRequest, ctx: Ctx) -> ClaimResponse:
    """Add a device to my account by the number on its label; opens its activation window.

    Failed claims count against the token (429 ``rate_limited`` past the limit).
    """
    owner = ctx.owner("claim devices")
    result = await ctx.admin.throttled_claim(
        body.vendor,
        body.model,
        body.identifier,
        owner=owner,
        token_id=ctx.principal.token_id,
        reason=body.reason,
    )
    model = await ctx.admin.model(body.vendor, body.model)
    device = device_body(await _device(ctx, model, result.identifier), model.kind)
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
    responses=error_responses(403),
    tags=["owner"],
)
async def my_devices(ctx: Ctx) -> DeviceList:
    """The devices in my account (at most 500), with the time left in each activation window."""
    owner = ctx.owner("list their devices")
    rows = await ctx.admin.owner_devices(owner, limit=500)
    return DeviceList(devices=[device_body(row, kind) for row, kind in rows])


@router.get(
    "/devices/{vendor}/{model}/{identifier}",
    response_model=Device,
    responses=error_responses(404),
    tags=["owner", "vendor"],
)
async def show_device(
    vendor: VendorPath, model: ModelPath, identifier: NumberPath, ctx: Ctx
) -> Device:
    """One device: an owner sees only their own; a vendor only its own models'."""
    row = await ctx.own_model(vendor, model)
    if ctx.role is Role.OWNER:
        return await _owned_device(ctx, row, identifier)
    return device_body(await _device(ctx, row, identifier), row.kind)


@router.post(
    "/devices/{vendor}/{model}/{identifier}/release",
    response_model=ActionResponse,
    responses=error_responses(403, 404, 409, body=True),
    tags=["owner"],
)
async def release(
    vendor: VendorPath,
    model: ModelPath,
    identifier: NumberPath,
    ctx: Ctx,
    body: ActionRequest | None = None,
) -> ActionResponse:
    """Give a device of mine up: its key stops working and anyone may claim it."""
    owner = ctx.owner("release devices")
    row = await ctx.admin.model(vendor, model)
    await _owned_device(ctx, row, identifier)
    result = await ctx.admin.release(vendor, model, identifier, owner=owner, reason=_why(body))
    return ActionResponse(
        message=f"The {_named(row, result.identifier)} is no longer in your account; its key "
        "stopped working and anyone may now claim it.",
        device=await _device_now(ctx, row, result.identifier),
    )


# -- vendors and administrators: revoke ----------------------------------------


@router.post(
    "/devices/{vendor}/{model}/{identifier}/revoke",
    response_model=ActionResponse,
    responses=error_responses(403, 404, 409, body=True),
    tags=["vendor"],
)
async def revoke(
    vendor: VendorPath,
    model: ModelPath,
    identifier: NumberPath,
    ctx: Ctx,
    body: ActionRequest | None = None,
) -> ActionResponse:
    """The device's key stops being valid now; it cannot activate until re-enabled."""
    ctx.vendor_scope("revoke keys")
    row = await ctx.own_model(vendor, model)
    result = await ctx.admin.revoke(vendor, model, identifier, reason=_why(body))
    return ActionResponse(
        message=f"The key of the {_named(row, result.identifier)} was revoked; the device "
        "cannot activate until it is re-enabled.",
        device=await _device_now(ctx, row, result.identifier),
    )


# -- owners, vendors and administrators: re-enable; administrators: transfer -------


@router.post(
    "/devices/{vendor}/{model}/{identifier}/reenable",
    response_model=ActionResponse,
    responses=error_responses(403, 404, 409, body=True),
    tags=["owner", "vendor"],
)
async def reenable(
    vendor: VendorPath,
    model: ModelPath,
    identifier: NumberPath,
    ctx: Ctx,
    body: ActionRequest | None = None,
) -> ActionResponse:
    """Open a new activation window (after a factory reset); the next activation
    issues a new key. An owner re-enables only their own devices."""
    row = await ctx.own_model(vendor, model)
    if ctx.role is Role.OWNER:
        await _owned_device(ctx, row, identifier)
    result = await ctx.admin.reenable(vendor, model, identifier, reason=_why(body))
    return ActionResponse(
        message=f"A new activation window is open for the {_named(row, result.identifier)} "
        f"for {_span(row.window_seconds)}; switch the device on to activate it again.",
        device=await _device_now(ctx, row, result.identifier),
    )


@router.post(
    "/devices/{vendor}/{model}/{identifier}/transfer",
    response_model=ActionResponse,
    responses=error_responses(403, 404, 409, body=True),
    tags=["admin"],
)
async def transfer(
    vendor: VendorPath, model: ModelPath, identifier: NumberPath, body: TransferRequest, ctx: Ctx
) -> ActionResponse:
    """Move a claimed device to another owner (audited). The previous owner's key is
    revoked (it no longer opens the broker) and the new owner's activation window opens."""
    ctx.admin_only("transfer devices")
    row = await ctx.admin.model(vendor, model)
    result = await ctx.admin.transfer(vendor, model, identifier, to=body.to, reason=body.reason)
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


def _why(body: ActionRequest | None) -> str | None:
    """The reason an action's optional body gives, if it has a body at all."""
    return body.reason if body is not None else None


async def _device(ctx: Caller, model: ModelRow, number: str) -> DeviceRow:
    """The device of a model already looked up; Admin.show's refusal if it is not approved."""
    row = await ctx.admin.device_of(model, number)
    return row or await ctx.admin.show(model.vendor, model.model, number)


async def _owned_device(ctx: Caller, model: ModelRow, identifier: str) -> Device:
    """The owner's own device; anything else is 404 with one sentence for every case."""
    owner = ctx.owner("see devices")
    row = await ctx.admin.device_of(model, identifier)
    if row is None or row.owner != owner:
        canonical = identifiers.normalize(model.kind, identifier, model.pattern)
        raise NotFound(
            f"There is no {identifiers.kind_name(model.kind)} "
            f"{identifiers.display(model.kind, canonical)} of {model.vendor}/{model.model} "
            "in your account."
        )
    return device_body(row, model.kind)


async def _device_now(ctx: Caller, model: ModelRow, canonical: str) -> Device:
    return device_body(await _device(ctx, model, canonical), model.kind)


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
