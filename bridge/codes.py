"""Every outcome code the bridge speaks: replies, claims, lifecycle, audit rows, errors.

One enum, so that mypy catches a misspelt code and a reader finds them all in one
place. The values are the strings on the wire, in the database and in the audit log;
a ``StrEnum`` member compares equal to its string, so code that still holds plain
strings (rows read from PostgreSQL, JSON replies) keeps working. Groups below say
where each code appears; :data:`REPLY_CODES` is the protocol's list (docs/protocol.md,
section 6; schemas/wire/reply.schema.json), in the order the document gives it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Code(StrEnum):
    """An outcome code."""

    #: Success: an activation reply's ``status``, an audit row of a change that happened.
    OK = "ok"

    # -- activation replies (protocol v1, docs/protocol.md section 6) ------------------
    MALFORMED = "malformed"
    INVALID_IDENTIFIER = "invalid_identifier"
    UNKNOWN_MODEL = "unknown_model"
    NOT_APPROVED = "not_approved"
    NOT_CLAIMED = "not_claimed"
    WINDOW_EXPIRED = "window_expired"
    ALREADY_ACTIVATED = "already_activated"
    REVOKED = "revoked"
    SEAL_REQUIRED = "seal_required"
    CLIENT_ID_RESERVED = "client_id_reserved"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"

    # -- owner side: claims and lifecycle (CLI, Python and HTTP API; audit rows) -------
    CLAIMED_BY_OTHER = "claimed_by_other"
    NOT_OWNER = "not_owner"
    #: a change refused because the state already says so (audited for every "already_")
    CONFLICT = "conflict"
    #: HTTP API: nothing of the caller's by that name
    NOT_FOUND = "not_found"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"

    # -- statuses the store answers to Admin (never on the wire; audited as CONFLICT) --
    ALREADY_YOURS = "already_yours"
    ALREADY_THEIRS = "already_theirs"
    ALREADY_REVOKED = "already_revoked"
    REVOKED_BY_VENDOR = "revoked_by_vendor"

    # -- enrollment keys: what creating, rotating or retiring one found ---------------
    HAS_KEY = "has_key"
    NO_KEY = "no_key"
    ALREADY_RETIRED = "already_retired"
    NEWEST = "newest"

    # -- failures that are not refusals (bridge.errors) -------------------------------
    #: the broker's dynamic-security plugin did not take a login change
    BROKER = "broker"
    #: the bridge cannot start or run a command as configured
    CONFIG = "config"
    #: the root of the exception tree; never raised as such
    ERROR = "error"


#: Every ``code`` an activation error reply can carry, in the protocol document's order.
REPLY_CODES: Final[tuple[Code, ...]] = (
    Code.MALFORMED,
    Code.INVALID_IDENTIFIER,
    Code.UNKNOWN_MODEL,
    Code.NOT_APPROVED,
    Code.NOT_CLAIMED,
    Code.WINDOW_EXPIRED,
    Code.ALREADY_ACTIVATED,
    Code.REVOKED,
    Code.SEAL_REQUIRED,
    Code.CLIENT_ID_RESERVED,
    Code.RATE_LIMITED,
    Code.UNAVAILABLE,
)

#: The reply codes that always carry ``retry_after``.
RETRY_AFTER_CODES: Final[tuple[Code, ...]] = (Code.RATE_LIMITED, Code.UNAVAILABLE)


def audit_code(status: str) -> Code:
    """The audit log's code for a lifecycle status: "already so" refusals are conflicts."""
    return Code.CONFLICT if status.startswith("already_") else Code(status)
