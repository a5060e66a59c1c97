"""The vendor, owner and administrator operations, as a Python API.

The ``bridge`` command line is a thin layer over this module, and a portal can
call the same operations::

    async with Admin.connect(load_settings()) as admin:
        await admin.add_model("acme", "thermo-1", kind="mac")
        await admin.approve("acme", "thermo-1", ["00:1A:2B:3C:4D:5E"])
        await admin.claim("acme", "thermo-1", "001a.2b3c.4d5e", owner="alice")

Every refusal is a :class:`bridge.errors.RequestError` whose message speaks to a
person at a portal. Every operation is one transaction and is audited.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime

from bridge import embedded, identifiers
from bridge.config import Settings
from bridge.errors import (
    ClaimedByOther,
    Conflict,
    InvalidIdentifier,
    Malformed,
    NotApproved,
    UnknownModel,
)
from bridge.records import DeviceRow, ModelRow
from bridge.store import Store


@dataclass(frozen=True)
class ApproveReport:
    added: int
    already: int


@dataclass(frozen=True)
class ClaimResult:
    identifier: str
    window_ends_at: datetime | None
    already_yours: bool


class Admin:
    """Administrative operations on one store."""

    def __init__(self, store: Store, *, actor: str = "cli") -> None:
        self._store = store
        self._actor = actor

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, settings: Settings, *, actor: str = "cli") -> AsyncIterator[Admin]:
        """Open the configured (or embedded) database; migrates the embedded one."""
        dsn = embedded.database_url(settings)
        async with Store.open(dsn, pool_size=2) as store:
            if embedded.is_embedded_database(settings):
                await store.migrate()
            yield cls(store, actor=actor)

    @property
    def store(self) -> Store:
        return self._store

    async def add_model(
        self,
        vendor: str,
        model: str,
        *,
        kind: str,
        pattern: str | None = None,
        window_seconds: int = 86_400,
        claim_required: bool = True,
    ) -> ModelRow:
        try:
            kind = identifiers.Kind(kind).value
        except ValueError as exc:
            kinds = ", ".join(k.value for k in identifiers.Kind)
            raise Malformed(f"The kind {kind!r} is not one of {kinds}.") from exc
        for label, value in (("vendor", vendor), ("model", model)):
            if not 1 <= len(value) <= 64:
                raise Malformed(f"The {label} name must be 1 to 64 characters.")
        if pattern is not None:
            if kind != identifiers.Kind.SERIAL:
                raise Malformed("A --pattern applies only to models whose kind is serial.")
            _check_pattern(pattern)
        if window_seconds <= 0:
            raise Malformed("The activation window must be at least one second.")
        row = await self._store.add_model(
            vendor=vendor,
            model=model,
            kind=kind,
            pattern=pattern,
            window_seconds=window_seconds,
            claim_required=claim_required,
            actor=self._actor,
        )
        if row is None:
            raise Conflict(f"The model {vendor}/{model} is already registered.")
        return row

    async def model(self, vendor: str, model: str) -> ModelRow:
        row = await self._store.get_model(vendor, model)
        if row is None:
            raise UnknownModel(
                f"The model {vendor}/{model} is not registered; check the vendor and model names."
            )
        return row

    async def approve(self, vendor: str, model: str, numbers: Iterable[str]) -> ApproveReport:
        """Approve identifiers (any accepted spelling); all or nothing on a bad one."""
        row = await self.model(vendor, model)
        pairs = []
        for text in numbers:
            canonical = identifiers.normalize(row.kind, text, row.pattern)
            pairs.append((canonical, identifiers.lookalike_key(row.kind, canonical)))
        if not pairs:
            raise Malformed("No identifier was given to approve.")
        added, already = await self._store.approve(row, pairs, actor=self._actor)
        return ApproveReport(added, already)

    async def claim(self, vendor: str, model: str, number: str, *, owner: str) -> ClaimResult:
        """Add a device to ``owner``'s account; opens the activation window."""
        if not 1 <= len(owner) <= 128:
            raise Malformed("The owner name must be 1 to 128 characters.")
        row = await self.model(vendor, model)
        what = identifiers.kind_name(row.kind)
        try:
            canonical = identifiers.normalize(row.kind, number, row.pattern)
        except InvalidIdentifier as exc:
            suggestion = await self._suggest(row, number)
            if suggestion:
                hinted = InvalidIdentifier(
                    exc.kind, exc.presented, f"{exc.reason}; did you mean {suggestion}?"
                )
                hinted.suggestion = suggestion
                raise hinted from exc
            raise
        outcome = await self._store.claim(row, canonical, owner=owner, actor=self._actor)
        shown = identifiers.display(row.kind, canonical)
        if outcome.status == "not_approved":
            suggestion = await self._suggest(row, number)
            hint = (
                f"did you mean {suggestion}?"
                if suggestion
                else f"please verify the exact {what} on the device's label, or contact the vendor."
            )
            refused = NotApproved(
                f"You have attempted to add a {what} {shown} that is not approved for this "
                f"device ({row.vendor}/{row.model}); {hint}"
            )
            refused.suggestion = suggestion
            raise refused
        if outcome.status == "claimed_by_other":
            raise ClaimedByOther(
                f"The {what} {shown} ({row.vendor}/{row.model}) is still claimed by another "
                "account; ask its previous owner to release it, or contact the vendor."
            )
        return ClaimResult(canonical, outcome.window_ends_at, outcome.status == "already_yours")

    async def show(self, vendor: str, model: str, number: str) -> DeviceRow:
        row = await self.model(vendor, model)
        canonical = identifiers.normalize(row.kind, number, row.pattern)
        device = await self._store.show(row, canonical)
        if device is None:
            raise NotApproved(
                f"The {identifiers.kind_name(row.kind)} {identifiers.display(row.kind, canonical)} "
                f"is not on the approval list of {row.vendor}/{row.model}."
            )
        return device

    async def _suggest(self, model: ModelRow, typed: str) -> str | None:
        """An approved identifier differing from ``typed`` only by look-alike characters."""
        key = identifiers.lookalike_key(model.kind, typed)
        for candidate in await self._store.lookalikes(model, key):
            if identifiers.suggestion_ok(typed, candidate):
                return identifiers.display(model.kind, candidate)
        return None


def _check_pattern(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise Malformed(
            f"The pattern {pattern!r} is not a valid regular expression: {exc}."
        ) from exc
