"""Plain records passed between the store and the use cases (no driver types leak out)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ModelRow:
    id: int
    vendor: str
    model: str
    kind: str
    pattern: str | None
    window_seconds: int
    claim_required: bool


@dataclass(frozen=True)
class ActivationOutcome:
    code: str
    replay: bytes | None
    window_ends_at: datetime | None


@dataclass(frozen=True)
class DeviceRow:
    vendor: str
    model: str
    identifier: str
    state: str
    owner: str | None
    window_ends_at: datetime | None
    activated_at: datetime | None
    approved_at: datetime
    key_id: str | None


@dataclass(frozen=True)
class ClaimOutcome:
    """``status`` is ok, already_yours, not_approved or claimed_by_other."""

    status: str
    window_ends_at: datetime | None = None


@dataclass(frozen=True)
class AuditEntry:
    action: str
    code: str
    actor: str | None = None
    client_id: str | None = None
    request_id: str | None = None
    vendor: str | None = None
    model: str | None = None
    identifier_presented: str | None = None
    identifier: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ApiToken:
    """An HTTP API token as stored: never the token, only what it stands for."""

    id: str
    role: str
    subject: str | None
    created_at: datetime
    revoked_at: datetime | None
