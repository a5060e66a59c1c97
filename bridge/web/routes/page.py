"""The reference owner page (``/``) and its files (``/static/``); not in the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def mount(app: FastAPI) -> None:
    """Serve the page at ``/`` and its script and style under ``/static/``."""
    app.add_api_route("/", _page, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


async def _page() -> Response:
    return FileResponse(STATIC_DIR / "index.html")
