"""The routes of the HTTP API, one module per resource; each a thin layer over Admin.

- :mod:`.tokens`: who a token speaks for;
- :mod:`.models`: registering and reading models, listing a model's devices;
- :mod:`.approvals`: approving and unapproving identifiers;
- :mod:`.devices`: claiming, showing and the lifecycle of one device;
- :mod:`.audit`: the audit log;
- :mod:`.support`: the support desk: diagnose, resolve, a model's support contact, an
  owner's history;
- :mod:`.page`: the reference owner page and its files.
"""

from __future__ import annotations

from fastapi import APIRouter

from bridge.web.routes import approvals, audit, devices, models, support, tokens

#: The ``/v1`` routers, in the order the OpenAPI document lists them.
ROUTERS: tuple[APIRouter, ...] = (
    tokens.router,
    devices.router,
    models.router,
    approvals.router,
    audit.router,
    support.router,
)
