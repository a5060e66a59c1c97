"""Who is asking: the token of a request, checked once, and the Admin that acts for it.

:func:`gate` authenticates from the headers alone, before any body is read (the guard
calls it); :data:`Ctx` hands each route the caller, with the role checks every route
shares and an :class:`bridge.admin.Admin` acting as that caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import Scope

from bridge.admin import Admin
from bridge.config import Settings
from bridge.errors import Forbidden, UnknownModel
from bridge.records import ModelRow
from bridge.store import Store
from bridge.tokens import Principal, Role, authenticate


class Caller:
    """What every request needs: who is asking, and the Admin acting for them."""

    def __init__(self, store: Store, settings: Settings, principal: Principal) -> None:
        self.principal = principal
        # The same Admin as the command line's, with the settings that reach the broker
        # (revoke, release and transfer close the device's login there) and the role
        # that asks (an owner cannot undo a vendor's revoke).
        self.admin = Admin(store, settings=settings, actor=str(principal), role=principal.role)

    @property
    def role(self) -> Role:
        return self.principal.role

    def owner(self, doing: str) -> str:
        """The owner name of an owner token, or Forbidden."""
        if self.principal.role is not Role.OWNER or self.principal.subject is None:
            raise Forbidden(f"Only an owner's token may {doing}.")
        return self.principal.subject

    def vendor_scope(self, doing: str) -> None:
        if self.principal.role is Role.OWNER:
            raise Forbidden(f"Only a vendor's or an administrator's token may {doing}.")

    def admin_only(self, doing: str) -> None:
        if self.principal.role is not Role.ADMIN:
            raise Forbidden(f"Only an administrator's token may {doing}.")

    async def own_model(self, vendor: str, model: str) -> ModelRow:
        """A model the token's vendor may manage; anyone else's looks unregistered."""
        if self.principal.role is Role.VENDOR and vendor != self.principal.subject:
            raise UnknownModel(
                f"The model {vendor}/{model} is not registered; check the vendor and model names."
            )
        return await self.admin.model(vendor, model)


_bearer = HTTPBearer(auto_error=False, description="`bridge token create` prints one")


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    store: Store = request.app.state.store
    settings: Settings = request.app.state.settings
    # The guard authenticated the request before reading its body (gate).
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        token = credentials.credentials if credentials else None
        principal = await authenticate(store, token)
    return Caller(store, settings, principal)


def gate(store: Store) -> Callable[[Scope], Awaitable[str]]:
    """Authenticate from the headers alone, as HTTPBearer reads them, before any body;
    the token's id names the caller's share of the guard's body slots."""

    async def check(scope: Scope) -> str:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        principal = await authenticate(store, bearer)
        scope.setdefault("state", {})["principal"] = principal
        return principal.token_id

    return check


Ctx = Annotated[Caller, Depends(_caller)]
