"""The HTTP API's application: routes, guard, refusals and the owner page, wired together.

Each route is a thin layer over :class:`bridge.admin.Admin`, like the command line: the
same operations, the same error codes and sentences, as JSON ``{"code": ..., "message":
...}`` with a fitting HTTP status. Who may do what comes from the bearer token
(:mod:`bridge.tokens`):

- an **owner** claims, lists, shows, releases and re-enables only their own
  devices; another owner's device is answered 404 exactly like a device that
  does not exist, so the API does not say whose it is;
- a **vendor** manages only the models whose ``vendor`` is its name; another
  vendor's model is answered like an unregistered one (404 ``unknown_model``);
- an **administrator** may do what vendors do for every vendor, and transfer.

Failed claims are throttled per token (``rate_limited``, 429 with Retry-After),
so that "did you mean ...?" cannot be used to enumerate approved numbers.

The OpenAPI document states every rule a request is checked against and every status
it may get, and links each answer naming a device or a model to what can be done with
it next (:mod:`bridge.web.links`), so that generated clients work.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge import __version__
from bridge.config import Settings
from bridge.errors import BridgeError
from bridge.store import Store
from bridge.web import links
from bridge.web.context import gate
from bridge.web.guard import RequestGuard
from bridge.web.refusals import STATUS, on_bridge_error, on_http, on_invalid, render_error
from bridge.web.routes import ROUTERS, page

__all__ = ["STATUS", "create_app"]


def create_app(store: Store, settings: Settings) -> FastAPI:
    """The API and the owner page on an open store."""
    app = FastAPI(
        title="provisioning-bridge",
        version=__version__,
        description="Owners claim devices; vendors approve them. Errors are "
        '`{"code", "message"}` with the codes of the command line.',
        # Swagger UI and ReDoc load scripts from a CDN into the page where a
        # token is typed; the OpenAPI document at /openapi.json stays.
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store
    app.state.settings = settings
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.api_max_body_bytes,
        gate=gate(store),
        render=render_error,
    )
    app.add_exception_handler(BridgeError, on_bridge_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http)  # type: ignore[arg-type]
    app.state.routers = ROUTERS
    for router in ROUTERS:
        app.include_router(router)
    page.mount(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = links.add_links(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
