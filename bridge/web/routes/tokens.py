"""``GET /v1/me``: who the bearer token speaks for."""

from __future__ import annotations

from fastapi import APIRouter

from bridge.web.bodies import Me
from bridge.web.context import Ctx
from bridge.web.refusals import error_responses

router = APIRouter(prefix="/v1")


@router.get("/me", response_model=Me, responses=error_responses(), tags=["account"])
async def me(ctx: Ctx) -> Me:
    """Who the token speaks for."""
    p = ctx.principal
    return Me(token_id=p.token_id, role=p.role.value, subject=p.subject)
