"""The support desk over HTTP: diagnose a number, resolve it, a model's support contact,
and an owner's history.

Who may ask what:

- a **vendor** diagnoses and resolves only its own models' numbers (another vendor's
  model is answered like an unregistered one, as everywhere in the API);
- an **administrator** any;
- an **owner** diagnoses only a device they hold or held, and sees nothing of other
  accounts (no name, actor or client id of anyone else); any other number is 404,
  word for word as a device that does not exist. Owners read their own history.

Routes run the same :class:`bridge.admin.Admin` as the rest of the API, so refusals are
the same codes and sentences; the app's error handlers turn them into JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from bridge import identifiers, text
from bridge.diagnosis import Action, Diagnosis
from bridge.errors import Forbidden
from bridge.records import ModelRow
from bridge.support import SupportDesk
from bridge.text import printable
from bridge.tokens import Role
from bridge.web.bodies import CONTROLS, SPACES, Reason, shown_text
from bridge.web.context import Caller, Ctx
from bridge.web.params import ModelPath, NumberPath, OwnerQuery, VendorPath
from bridge.web.refusals import error_responses

router = APIRouter(prefix="/v1")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceNow(_Body):
    state: str
    owner: str | None
    approved_at: datetime
    claimed_at: datetime | None
    window_ends_at: datetime | None
    activated_at: datetime | None
    client_id: str | None


class TimelineEntry(_Body):
    at: datetime
    action: str = Field(
        description="approve, claim, release, transfer, reenable, activate...; or "
        "older_attempts: a line in place of the older device attempts not shown, which "
        "says how many (count: attempts; detail: in words)"
    )
    code: str
    actor: str | None
    owner: str | None
    client_id: str | None
    presented: str | None = Field(description="the number as an attempt carried it")
    detail: str | None
    count: int = Field(description="attempts a tallied row stands for")
    last_at: datetime | None


class NeighbourBody(_Body):
    identifier: str
    how: str
    owner: str | None
    state: str


class StrayBody(_Body):
    at: datetime
    client_id: str | None
    presented: str | None
    code: str
    count: int
    how: str = Field(description="how its number differs from the one diagnosed")


class DiagnosisBody(_Body):
    vendor: str
    model: str
    kind: str
    typed: str
    identifier: str | None = Field(description="canonical, shown the way people read it")
    verdict: str = Field(
        description="typo, claimed_by_other, not_approved, wrong_identifier, device_refused, "
        "never_tried, window_closed, not_claimed, revoked or fine"
    )
    cause: int | None = Field(description="1 to 4, the support guidance's causes")
    summary: str
    evidence: list[str]
    next_step: str
    actions: list[str] = Field(description="what support can do here: POST .../resolve")
    support_contact: str | None
    device: DeviceNow | None
    timeline: list[TimelineEntry]
    neighbours: list[NeighbourBody]
    attempts_elsewhere: list[StrayBody]


#: A new owner's name as support types it: printable, no space at either end; that it
#: holds no invisible character or odd space is said in words.
_EDGE = f"[^{CONTROLS}{SPACES}]"
OWNER_NAME = f"^{_EDGE}(?:[^{CONTROLS}]*{_EDGE})?$"
OwnerName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=text.PERSON_MAX,
        description="no space at either end; no invisible character",
        json_schema_extra={"pattern": OWNER_NAME},
    ),
    AfterValidator(printable),
]


class ReleaseRequest(_Body):
    """Release whoever holds it; the previous owner sees the reason in their history."""

    action: Literal[Action.RELEASE]
    reason: Reason


class TransferRequest(_Body):
    """Move the claim to ``to`` (the person asking)."""

    action: Literal[Action.TRANSFER]
    reason: Reason
    to: OwnerName = Field(description="the new owner")


class ApproveRequest(_Body):
    action: Literal[Action.APPROVE]
    reason: Reason | None = None


class ReenableRequest(_Body):
    """Open a new activation window."""

    action: Literal[Action.REENABLE]
    reason: Reason | None = None


#: What the document says of a resolve: which action needs which fields.
ResolveRequest = Annotated[
    ReleaseRequest | TransferRequest | ApproveRequest | ReenableRequest,
    Field(discriminator="action"),
]


class ResolveAnswer(_Body):
    message: str
    diagnosis: DiagnosisBody


class ContactBody(_Body):
    vendor: str
    model: str
    support_contact: str | None


Contact = Annotated[
    str,
    shown_text(text.CONTACT_MAX, "shown to owners beside refusals; no invisible character"),
    AfterValidator(printable),
]


class ContactRequest(_Body):
    support_contact: Contact | None


class HistoryBody(_Body):
    at: datetime
    action: str
    vendor: str
    model: str
    identifier: str
    by: str
    reason: str | None


class HistoryList(_Body):
    entries: list[HistoryBody]


def diagnosis_body(d: Diagnosis) -> DiagnosisBody:
    """The JSON form of a diagnosis (also what `bridge diagnose --json` prints)."""
    device = d.device
    return DiagnosisBody(
        vendor=d.vendor,
        model=d.model,
        kind=d.kind,
        typed=d.typed,
        identifier=d.identifier,
        verdict=d.verdict.value,
        cause=d.cause,
        summary=d.summary,
        evidence=d.evidence,
        next_step=d.next_step,
        actions=[a.value for a in d.actions],
        support_contact=d.support_contact,
        device=DeviceNow(
            state=device.state,
            owner=device.owner,
            approved_at=device.approved_at,
            claimed_at=device.claimed_at,
            window_ends_at=device.window_ends_at,
            activated_at=device.activated_at,
            client_id=device.client_id,
        )
        if device
        else None,
        timeline=[
            TimelineEntry(
                at=e.at,
                action=e.action,
                code=e.code,
                actor=e.actor,
                owner=e.owner,
                client_id=e.client_id,
                presented=e.presented,
                detail=e.detail,
                count=e.count,
                last_at=e.last_at,
            )
            for e in d.timeline
        ],
        neighbours=[
            NeighbourBody(
                identifier=identifiers.display(d.kind, n.identifier),
                how=n.how,
                owner=n.owner,
                state=n.state,
            )
            for n in d.neighbours
        ],
        attempts_elsewhere=[
            StrayBody(
                at=s.event.at,
                client_id=s.event.client_id,
                presented=s.event.presented,
                code=s.event.code,
                count=s.event.count,
                how=s.how,
            )
            for s in d.strays
        ],
    )


class _Desk:
    """The caller (who asks, and the Admin acting for them) and the support desk on it."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.principal = caller.principal
        self.admin = caller.admin
        self.desk = SupportDesk(caller.admin)

    def staff(self, doing: str) -> None:
        self.caller.vendor_scope(doing)

    async def own_model(self, vendor: str, model: str) -> ModelRow:
        return await self.caller.own_model(vendor, model)


def _desk(caller: Ctx) -> _Desk:
    return _Desk(caller)


Desk = Annotated[_Desk, Depends(_desk)]


@router.get(
    "/diagnose/{vendor}/{model}/{identifier}",
    response_model=DiagnosisBody,
    responses=error_responses(404),
    tags=["support"],
)
async def diagnose(
    vendor: VendorPath,
    model: ModelPath,
    identifier: NumberPath,
    desk: Desk,
    asking: OwnerQuery = None,
) -> DiagnosisBody:
    """Why this number cannot be added or activated: its state, timeline and verdict
    (any spelling). An owner may ask only about a device they hold or held."""
    if desk.principal.role is Role.OWNER:
        assert desk.principal.subject is not None
        found = await desk.desk.diagnose(vendor, model, identifier, owner=desk.principal.subject)
    else:
        await desk.own_model(vendor, model)
        found = await desk.desk.diagnose(vendor, model, identifier, asking=asking)
    return diagnosis_body(found)


@router.post(
    "/diagnose/{vendor}/{model}/{identifier}/resolve",
    response_model=ResolveAnswer,
    responses=error_responses(403, 404, 409, body=True),
    tags=["support"],
)
async def resolve(
    vendor: VendorPath,
    model: ModelPath,
    identifier: NumberPath,
    body: ResolveRequest,
    desk: Desk,
) -> ResolveAnswer:
    """Act on a diagnosis: ``release`` (a reason is required; the previous owner sees it),
    ``transfer`` to ``to`` (reason required), ``approve`` or ``reenable``. Audited with
    the token as the actor."""
    desk.staff("resolve a diagnosis")
    await desk.own_model(vendor, model)
    message = await desk.desk.resolve(
        vendor, model, identifier, body.action, reason=body.reason, to=_to(body)
    )
    after = await desk.desk.diagnose(vendor, model, identifier, asking=_to(body))
    return ResolveAnswer(message=message, diagnosis=diagnosis_body(after))


def _to(body: ReleaseRequest | TransferRequest | ApproveRequest | ReenableRequest) -> str | None:
    return body.to if isinstance(body, TransferRequest) else None


@router.get(
    "/models/{vendor}/{model}/support-contact",
    response_model=ContactBody,
    responses=error_responses(404),
    tags=["support"],
)
async def support_contact(vendor: VendorPath, model: ModelPath, desk: Desk) -> ContactBody:
    """Whom an owner reaches about this model (an owner's token reads any model's: it is
    shown beside refusals; a vendor's only its own, as everywhere)."""
    row = await desk.own_model(vendor, model)
    return ContactBody(
        vendor=row.vendor,
        model=row.model,
        support_contact=await desk.desk.contact(vendor, model),
    )


@router.put(
    "/models/{vendor}/{model}/support-contact",
    response_model=ContactBody,
    responses=error_responses(403, 404, body=True),
    tags=["support"],
)
async def set_support_contact(
    vendor: VendorPath, model: ModelPath, body: ContactRequest, desk: Desk
) -> ContactBody:
    """Set (or clear, with null) the support contact of one of my models."""
    desk.staff("set a model's support contact")
    row = await desk.caller.own_model(vendor, model)
    value = await desk.desk.set_contact(
        vendor, model, body.support_contact, actor=str(desk.principal)
    )
    return ContactBody(vendor=row.vendor, model=row.model, support_contact=value)


@router.get("/history", response_model=HistoryList, responses=error_responses(403), tags=["owner"])
async def history(desk: Desk) -> HistoryList:
    """What happened to my devices, newest first: claims, releases (with the reason
    support recorded), transfers, re-enables, revokes."""
    if desk.principal.role is not Role.OWNER or desk.principal.subject is None:
        raise Forbidden("Only an owner's token may read an owner's history.")
    entries = await desk.desk.history(desk.principal.subject)
    return HistoryList(
        entries=[
            HistoryBody(
                at=e.at,
                action=e.action,
                vendor=e.vendor,
                model=e.model,
                identifier=e.identifier,
                by=e.by,
                reason=e.reason,
            )
            for e in entries
        ]
    )
