"""The ``bridge`` command line: a thin layer over :mod:`bridge.admin`, the service and the client.

One module a command group, each registering its subcommands' parsers beside their
handlers (``register(commands)``); :data:`GROUPS` names them in the order
``bridge --help`` shows them, and is the one place a new group is added. The shared
options and value types live in :mod:`bridge.cli.options`, the shape of an ``Admin``
command in :mod:`bridge.cli.command`.

Errors go to stderr as ``error: <code>: <sentence>`` with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from bridge import __version__
from bridge.cli.options import Commands, Handler, Parser, parse_duration, parse_since
from bridge.errors import BridgeError, Malformed, RequestError

#: The command groups: modules of this package, in the order of ``bridge --help``.
#: A new group is its module (with ``register(commands)``) and one line here.
GROUPS = (
    "database",  # migrate, stop-db
    "broker",  # broker-files
    "serve",  # serve, check, api
    "tokens",  # token create|revoke|list
    "models",  # model add
    "enrollment",  # enrollment-key create|rotate|retire|list, device-secret
    "approvals",  # approve, unapprove
    "lifecycle",  # claim, release, transfer, reenable, revoke
    "devices",  # list, audit, show
    "activate",  # activate
    "support",  # diagnose, resolve (model contact: in the model group)
)


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    top = Parser(
        prog="bridge",
        description="MQTT provisioning bridge: devices trade their sticker number for a key.",
        epilog="Quick start: `bridge serve --dev` in one terminal; `bridge model add`, "
        "`bridge approve`, `bridge claim`, `bridge activate` in another. `bridge COMMAND "
        "--help` explains each command.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = Commands(top.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for name in GROUPS:
        register(name)(commands)
    return top


_parser = parser  # the name bridge.reference knows


def register(group: str) -> Callable[[Commands], None]:
    """The ``register`` function of the command group ``group``."""
    function: Callable[[Commands], None] = importlib.import_module(f"{__name__}.{group}").register
    return function


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status."""
    args = parser().parse_args(argv)
    run: Handler = args.run
    try:
        return _run(run(args))
    except BridgeError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        if isinstance(exc, RequestError) and exc.support_contact:
            print(f"support: {exc.support_contact}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(coro: Coroutine[Any, Any, int]) -> int:
    # The standard event loop, even where uvloop is installed: aiomqtt drives paho's
    # socket through add_reader/add_writer, and uvloop answers an error on such a socket
    # (a TCP reset from the broker) by closing its poll handle without telling the
    # reader, which left `serve` connected to nothing for good (issue 12).
    return asyncio.run(coro)


__all__ = ["GROUPS", "Malformed", "main", "parse_duration", "parse_since", "parser"]
