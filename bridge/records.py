"""Plain records passed between the store and the use cases (no driver types leak out).

Outcome codes are :class:`bridge.codes.Code` members: a record built with a plain
string turns it into its member, so a misspelt code fails where it is made. Fields
typed ``str`` still take the store's literals until the store speaks ``Code``; narrow
them to ``Code`` then, and mypy will name every literal left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bridge.codes import Code


@dataclass(frozen=True)
class ModelRow:
    id: int
    vendor: str
    model: str
    kind: str
    pattern: str | None
    window_seconds: int
    claim_required: bool
    #: the vendor chose plaintext delivery (devices that cannot do X25519)
    plaintext_keys: bool = False
    #: requests must carry a valid ``proof`` (the model has an enrollment key)
    proof_required: bool = False
    #: (generation, encrypted key) of the enrollment keys in use, newest first. Only
    #: ciphertext, and still kept out of reprs: it has no business in a log line.
    enrollment_keys: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)
    #: whom an owner asks when a device will not add (``bridge model contact``)
    support_contact: str | None = None


@dataclass(frozen=True)
class EnrollmentKeyInfo:
    """One generation of a model's enrollment key as listed: never the key."""

    generation: int
    created_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True)
class ActivationOutcome:
    code: Code
    replay: bytes | None
    window_ends_at: datetime | None
    retry_after: int | None = None  # set with code "rate_limited"
    #: a new key replaced the one this client id held (also with a replay whose
    #: login_key is set: the replaced login may still be open)
    replaced_client_id: str | None = None
    #: with "rate_limited": the limit passed, "client", or "identifier" / "model" (a
    #: failure from many client ids, answered without its reason: guessing suspected)
    limited_by: str | None = None
    #: with a replayed "ok": the key of a broker login that may not be open yet (the
    #: bridge that issued it stopped before it was), encrypted; None once it is open
    login_key: bytes | None = None

    def __post_init__(self) -> None:
        _as_code(self, "code")


@dataclass(frozen=True)
class LoginOpened:
    """An issued key whose broker login was just opened (see ``Store.login_opened``)."""

    client_id: str
    request_id: str
    model_id: int
    identifier: str


@dataclass(frozen=True)
class Refusal:
    """What counting a refusal decided before the database says about the answer."""

    retry_after: int | None = None  # set when the answer becomes "rate_limited"
    limited_by: str | None = None  # as in ActivationOutcome


@dataclass(frozen=True)
class RateLimit:
    """Failed activations allowed per window.

    ``failures`` per client id: past it, the client id gets ``rate_limited`` whatever it
    asks. ``identifier_failures`` and ``model_failures`` count failures from all client
    ids: past them, a request that would fail gets ``rate_limited`` instead of its
    reason, and one that would succeed still succeeds.
    """

    failures: int = 10
    window_seconds: int = 60
    identifier_failures: int = 10
    model_failures: int = 100


@dataclass(frozen=True)
class AuditTally:
    """How device failures are tallied in the audit log (schemas/functions/tally.sql).

    One row per (client id, action, code) per ``window_seconds``, with a count; at most
    ``clients`` such rows per code and window, the rest counted in one row whose client
    id is ``*``.
    """

    window_seconds: int = 3600
    clients: int = 1000


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
class StoredKey:
    """What verifying a key needs: the device's state and the keyed hash of its key."""

    state: str
    key_id: str | None
    key_hash: bytes

    def __repr__(self) -> str:  # the hash is not the key, but it has no business in logs
        return f"StoredKey(state={self.state!r}, key_id={self.key_id!r})"


@dataclass(frozen=True)
class ClaimOutcome:
    """``status`` is ok, already_yours, not_approved or claimed_by_other."""

    status: str
    window_ends_at: datetime | None = None

    def __post_init__(self) -> None:
        _as_code(self, "status")


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
    owner: str | None = None

    def __post_init__(self) -> None:
        _as_code(self, "code")


@dataclass(frozen=True)
class AuditRecord:
    """One row of the audit log as read back (never a key: the table holds none)."""

    id: int
    at: datetime
    action: str
    code: str
    actor: str | None
    client_id: str | None
    request_id: str | None
    vendor: str | None
    model: str | None
    identifier_presented: str | None
    identifier: str | None
    owner: str | None
    detail: str | None
    #: attempts this row stands for: 1, or a tally of repeated device failures
    #: (the fields are the first one's; ``last_at`` is the time of the last)
    count: int = 1
    last_at: datetime | None = None


@dataclass(frozen=True)
class AuditQuery:
    """Filters of ``bridge audit``; None means any. ``identifiers``: canonical candidates."""

    vendor: str | None = None
    model: str | None = None
    identifiers: tuple[str, ...] | None = None
    owner: str | None = None
    client_id: str | None = None
    code: str | None = None
    since: datetime | None = None
    limit: int = 100


@dataclass(frozen=True)
class LifecycleOutcome:
    """The result of release, transfer, reenable or revoke.

    ``status`` is ok or the refusal (not_approved, not_claimed, not_owner,
    already_theirs, already_revoked, revoked_by_vendor); ``owner`` the owner before
    the change; ``login`` the client id whose broker login held the device's key.
    """

    status: str
    owner: str | None = None
    state: str | None = None
    window_ends_at: datetime | None = None
    login: str | None = None

    def __post_init__(self) -> None:
        _as_code(self, "status")


@dataclass(frozen=True)
class UnapproveOutcome:
    removed: list[str]
    missing: list[str]
    #: (identifier, owner, state) of devices in use, left alone without force
    in_use: list[tuple[str, str | None, str]]
    #: client ids whose broker logins held the keys of removed devices
    logins: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ApiToken:
    """An HTTP API token as stored: never the token, only what it stands for."""

    id: str
    role: str
    subject: str | None
    created_at: datetime
    revoked_at: datetime | None


def _as_code(record: object, name: str) -> None:
    # Frozen dataclasses: the field is set the way dataclasses set it in __init__.
    object.__setattr__(record, name, Code(getattr(record, name)))


@dataclass(frozen=True, kw_only=True)
class Activation:
    """One activation's arguments: each field is the parameter ``p_<name>`` of
    ``bridge_activate`` (schemas/functions/transitions/activate.sql), passed by name.

    Fields are in name order (tests/unit/test_activation_record.py checks), so a new
    argument is this field, that parameter, and the caller that fills it. SQL types
    follow the Python ones (str text, int integer, bytes bytea, bool boolean) unless a
    field's metadata names another.
    """

    client_id: str
    #: failures a client id may have in a window (RateLimit.failures)
    client_limit: int
    #: devices get broker logins named by their client id: another's is refused
    device_logins: bool
    #: how long the stored reply answers a retry of the same request
    grace_seconds: int
    identifier: str
    identifier_limit: int
    key_hash: bytes
    key_id: str
    #: where devices get broker logins: the key, encrypted under the server secret, kept
    #: with the stored reply until its login is open, so a bridge killed between the
    #: commit and the login opens it on the retry (keyword only: None without logins)
    login_key: bytes | None = field(default=None, kw_only=True, metadata={"sql": "bytea"})
    model_id: int = field(metadata={"sql": "bigint"})
    model_limit: int
    presented: str
    reply: bytes
    request_id: str
    #: the throttle's window (RateLimit.window_seconds)
    window_seconds: int
