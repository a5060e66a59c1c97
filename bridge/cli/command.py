"""The shape most commands share: open :class:`~bridge.admin.Admin`, run one step, print.

A handler written with :func:`admin_command` receives an open ``Admin`` and the parsed
arguments, prints its result (:func:`emit` for the commands that offer ``--json``) and
returns an exit status, or nothing for 0. A :class:`~bridge.errors.BridgeError` it raises
becomes ``error: <code>: <sentence>`` and exit status 1 in :func:`bridge.cli.main`.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from bridge.admin import Admin
from bridge.cli.options import Handler, settings

#: The body of an Admin command: an exit status, or None for 0.
AdminStep = Callable[[Admin, argparse.Namespace], Awaitable[int | None]]


def admin_command(*, audited: bool = True) -> Callable[[AdminStep], Handler]:
    """Make ``step`` a handler that runs it with an ``Admin`` opened from the settings.

    ``audited``: the audit log names who ran the command (``cli:<login>``); without it
    the actor is plain ``cli``.
    """

    def decorate(step: AdminStep) -> Handler:
        async def handler(args: argparse.Namespace) -> int:
            actor = who() if audited else "cli"
            async with Admin.connect(settings(args), actor=actor) as admin:
                return await step(admin, args) or 0

        return handler

    return decorate


def who() -> str:
    """Who ran the command, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def when(value: datetime | None) -> str:
    """A time as people read it in a terminal, or ``-``."""
    return value.isoformat(timespec="seconds") if value else "-"


def emit(args: argparse.Namespace, value: object, lines: Iterable[str]) -> None:
    """``value`` as one line of JSON with ``--json``, else ``lines`` for people."""
    if args.json:
        print(json.dumps(value, default=_jsonable))
    else:
        for line in lines:
            print(line)


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else str(value)
