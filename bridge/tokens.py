"""Bearer tokens of the HTTP API: issue, keep hashed, authenticate, revoke.

A token looks like ``bt_<id>_<secret>``: ``id`` (12 hex characters) is its public
handle, printed at creation and used to revoke it; ``secret`` is 256 bits from
the OS CSPRNG. The token is shown once and the database keeps only its SHA-256.
An unkeyed hash is enough here (unlike device keys, which are short): nobody can
guess a 256-bit secret from its hash, and the API then needs no server secret.

A token speaks for one *principal*: an owner (by name), a vendor (by the
``models.vendor`` name) or an administrator.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from bridge import text
from bridge.errors import Malformed, NotFound, Unauthorized
from bridge.records import ApiToken
from bridge.store import Store

_TOKEN = re.compile(r"bt_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")


class Role(StrEnum):
    OWNER = "owner"
    VENDOR = "vendor"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who a request speaks for: the role of its token and the name it carries."""

    token_id: str
    role: Role
    subject: str | None  # owner or vendor name; None for an administrator

    def __str__(self) -> str:
        # The audit log's actor: never the token, only its public id.
        who = f"{self.role}:{self.subject}" if self.subject else str(self.role)
        return f"api:{who}:{self.token_id}"


@dataclass(frozen=True)
class IssuedToken:
    """A new token: ``token`` exists only in this object and on the person's screen."""

    token: str
    record: ApiToken

    def __repr__(self) -> str:
        return f"IssuedToken(id={self.record.id!r}, role={self.record.role!r}, token=***)"


def digest(token: str) -> bytes:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    """(id, token) of a fresh token."""
    token_id = secrets.token_hex(6)
    return token_id, f"bt_{token_id}_{secrets.token_urlsafe(32)}"


async def create_token(
    store: Store, role: Role | str, subject: str | None = None, *, actor: str = "cli"
) -> IssuedToken:
    """Issue a token for an owner or vendor named ``subject``, or for an administrator."""
    role = Role(role)
    if role is Role.ADMIN:
        if subject is not None:
            raise Malformed("An administrator token is not issued for a name.")
    elif subject is None or not text.is_person_name(subject):
        raise Malformed(
            f"A {role} token needs the {role}'s name, 1 to {text.PERSON_MAX} printable characters."
        )
    token_id, token = new_token()
    record = await store.add_token(
        token_id=token_id, role=role.value, subject=subject, token_hash=digest(token), actor=actor
    )
    return IssuedToken(token, record)


async def revoke_token(store: Store, token_id: str, *, actor: str = "cli") -> ApiToken:
    """Revoke a token by its id; requests carrying it are refused from now on."""
    if not _TOKEN_ID.fullmatch(token_id):
        raise Malformed(f"{token_id!r} is not a token id (12 hex characters, as printed).")
    record = await store.revoke_token(token_id, actor=actor)
    if record is None:
        raise NotFound(f"There is no token with the id {token_id}.")
    return record


async def authenticate(store: Store, token: str | None) -> Principal:
    """The principal of a bearer token, or :class:`Unauthorized`."""
    if not token or not _TOKEN.fullmatch(token):
        raise Unauthorized(
            "This request needs a valid API token: send `Authorization: Bearer <token>`."
        )
    record = await store.token_by_hash(digest(token))
    if record is None or record.revoked_at is not None:
        # One sentence for both: a revoked token and a made-up one look alike.
        raise Unauthorized("This API token is not valid (unknown or revoked).")
    return Principal(record.id, Role(record.role), record.subject)
