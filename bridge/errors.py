"""The bridge's one exception tree.

Every failure the bridge reports to a person or a device is a ``BridgeError``
carrying a protocol ``code`` (a :class:`bridge.codes.Code`) and one clear sentence
(``message``). Foreign exceptions (asyncpg, aiomqtt, OS errors) are translated into
this tree once, at the boundary that meets them, with ``raise ... from exc``::

    BridgeError                     code, message
    ├── RequestError                a refusal; answered to the requester
    │   ├── Malformed               "malformed"
    │   ├── InvalidIdentifier       "invalid_identifier" (kind, presented, reason)
    │   ├── UnknownModel            "unknown_model"
    │   ├── NotApproved             "not_approved"
    │   ├── NotClaimed              "not_claimed"
    │   ├── SealRequired            "seal_required" (no public_key; the model delivers sealed)
    │   ├── ClientIdReserved        "client_id_reserved" (names a login not the device's)
    │   ├── ClaimedByOther          "claimed_by_other" (owner side only)
    │   ├── NotOwner                "not_owner" (owner side only)
    │   ├── Conflict                "conflict" (e.g. a model that already exists)
    │   ├── NotFound                "not_found" (HTTP API: nothing of yours by that name)
    │   ├── Unauthorized            "unauthorized" (HTTP API: no valid token)
    │   ├── Forbidden               "forbidden" (HTTP API: the token's role may not do that)
    │   ├── RateLimited             "rate_limited" (retry_after)
    │   └── TooLarge                "too_large" (HTTP API: a body or request over a cap)
    ├── Unavailable                 "unavailable" (retry_after): the database is down
    ├── BrokerAdminError            "broker": the broker did not take a login change
    └── ConfigError                 "config": the bridge cannot start as configured

Refusals decided in the database (``window_expired``, ``already_activated``,
``revoked``, ...) are answered from the outcome's code and have no class here.
"""

from __future__ import annotations

from bridge.codes import Code


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""

    code: Code = Code.ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RequestError(BridgeError):
    """A request was refused; the requester gets ``code`` and ``message``.

    ``suggestion`` is set when the message asks "did you mean ...?", so that a
    portal can offer the suggested identifier as a link. ``support_contact`` is the
    vendor's support contact for the model, where a refused claim has one to offer.
    """

    suggestion: str | None = None
    support_contact: str | None = None


class Malformed(RequestError):
    code = Code.MALFORMED


class InvalidIdentifier(RequestError):
    """An identifier cannot be a number of the model's kind."""

    code = Code.INVALID_IDENTIFIER

    def __init__(self, kind: str, presented: str, reason: str) -> None:
        # identifiers imports this module, so its name table is looked up late.
        from bridge.identifiers import kind_name  # noqa: PLC0415

        self.kind = kind
        self.presented = presented
        self.reason = reason
        super().__init__(f"The {kind_name(kind)} {presented!r} is not valid: {reason}.")


class UnknownModel(RequestError):
    code = Code.UNKNOWN_MODEL


class NotApproved(RequestError):
    code = Code.NOT_APPROVED


class NotClaimed(RequestError):
    code = Code.NOT_CLAIMED


class SealRequired(RequestError):
    """A request without ``public_key`` for a model that delivers keys only sealed."""

    code = Code.SEAL_REQUIRED


class ClientIdReserved(RequestError):
    code = Code.CLIENT_ID_RESERVED


class ClaimedByOther(RequestError):
    code = Code.CLAIMED_BY_OTHER


class NotOwner(RequestError):
    code = Code.NOT_OWNER


class Conflict(RequestError):
    code = Code.CONFLICT


class NotFound(RequestError):
    code = Code.NOT_FOUND


class Unauthorized(RequestError):
    code = Code.UNAUTHORIZED


class Forbidden(RequestError):
    code = Code.FORBIDDEN


class RateLimited(RequestError):
    code = Code.RATE_LIMITED

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooLarge(RequestError):
    """A request over one of the documented caps (body size, rows, numbers); HTTP 413."""

    code = Code.TOO_LARGE


class Unavailable(BridgeError):
    """Infrastructure is down; the requester should retry after ``retry_after`` s."""

    code = Code.UNAVAILABLE

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BrokerAdminError(BridgeError):
    """The broker's dynamic-security plugin did not answer or refused a command."""

    code = Code.BROKER


class ConfigError(BridgeError):
    """The bridge cannot start or run a command as configured."""

    code = Code.CONFIG
