"""Approvals: which identifiers of a model may be claimed and activated (vendors)."""

from __future__ import annotations

from fastapi import APIRouter

from bridge import approval_file, identifiers
from bridge.errors import TooLarge
from bridge.web.bodies import (
    BULK_MAX_IDENTIFIERS,
    ApproveRequest,
    ApproveResponse,
    BulkApproveRequest,
    BulkApproveResponse,
    Refused,
    UnapproveRequest,
    UnapproveResponse,
)
from bridge.web.context import Ctx
from bridge.web.params import ModelPath, VendorPath
from bridge.web.refusals import error_responses

router = APIRouter(prefix="/v1")


@router.post(
    "/models/{vendor}/{model}/approvals",
    response_model=ApproveResponse,
    responses=error_responses(403, 404, body=True),
    tags=["vendor"],
)
async def approve(
    vendor: VendorPath, model: ModelPath, body: ApproveRequest, ctx: Ctx
) -> ApproveResponse:
    """Approve identifiers (up to 10,000 per request); all or nothing on a bad one."""
    ctx.vendor_scope("approve devices")
    await ctx.own_model(vendor, model)
    report = await ctx.admin.approve(vendor, model, body.identifiers, reason=body.reason)
    return ApproveResponse(added=report.added, already=report.already)


@router.post(
    "/models/{vendor}/{model}/approvals/bulk",
    response_model=BulkApproveResponse,
    responses=error_responses(403, 404, body=True),
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
        vendor,
        model,
        enumerate(body.rows, start=1),
        dry_run=body.dry_run,
        source="api",
        reason=body.reason,
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
    responses=error_responses(403, 404, 409, body=True),
    tags=["vendor"],
)
async def unapprove(
    vendor: VendorPath, model: ModelPath, body: UnapproveRequest, ctx: Ctx
) -> UnapproveResponse:
    """Take identifiers off the approval list; devices in use need ``force`` (else 409)."""
    ctx.vendor_scope("unapprove devices")
    row = await ctx.own_model(vendor, model)
    report = await ctx.admin.unapprove(
        vendor, model, body.identifiers, force=body.force, reason=body.reason
    )
    return UnapproveResponse(
        removed=[identifiers.display(row.kind, i) for i in report.removed],
        missing=[identifiers.display(row.kind, i) for i in report.missing],
    )
