"""``GET /v1/audit``: activation attempts and administrative actions, newest first."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from bridge.errors import Forbidden
from bridge.tokens import Role
from bridge.web.bodies import AuditEntryBody, AuditList
from bridge.web.context import Ctx
from bridge.web.params import (
    ClientIdQuery,
    CodeQuery,
    ModelQuery,
    NumberQuery,
    OwnerQuery,
    SinceQuery,
    VendorQuery,
)
from bridge.web.refusals import error_responses

router = APIRouter(prefix="/v1")


@router.get(
    "/audit", response_model=AuditList, responses=error_responses(403, 404), tags=["vendor"]
)
async def audit(
    ctx: Ctx,
    *,
    vendor: VendorQuery = None,
    model: ModelQuery = None,
    identifier: NumberQuery = None,
    owner: OwnerQuery = None,
    client_id: ClientIdQuery = None,
    code: CodeQuery = None,
    since: SinceQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditList:
    """Activation attempts and administrative actions, newest first (never a key).
    A vendor's token reads only its own models' entries."""
    ctx.vendor_scope("read the audit log")
    if ctx.role is Role.VENDOR:
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
