"""``bridge claim|release|transfer|reenable|revoke``: move one device through its lifecycle.

Each command is one :class:`~bridge.admin.Admin` call; the transition itself, its audit
row and the broker login it closes are decided there, for every entry point alike.
Each takes ``--reason``, kept in that audit row.
"""

from __future__ import annotations

import argparse
import sys

from bridge.admin import Admin, LifecycleResult
from bridge.cli.command import admin_command, when
from bridge.cli.options import (
    Commands,
    database_options,
    device_arguments,
    parse_duration,
    reason_option,
)


def register(commands: Commands) -> None:
    """Add ``claim``, ``release``, ``transfer``, ``reenable`` and ``revoke``."""
    p = commands.add(
        "claim",
        _claim,
        parents=[database_options()],
        summary="add a device to an owner's account",
        description="Claim a device for an owner; opens its activation window.",
    )
    device_arguments(p)
    p.add_argument("--owner", required=True, metavar="OWNER", help="whose account it joins")
    reason_option(p)

    p = commands.add(
        "release",
        _release,
        parents=[database_options()],
        summary="an owner gives a device up",
        description="The owner gives the device up: its key stops being valid and "
        "another owner may claim it. Only the device's owner can release it.",
    )
    device_arguments(p)
    p.add_argument(
        "--owner", required=True, metavar="OWNER", help="the device's owner, who gives it up"
    )
    reason_option(p)

    p = commands.add(
        "transfer",
        _transfer,
        parents=[database_options()],
        summary="move a claimed device to another owner (administrator)",
        description="Move a claimed device to another owner; recorded in the audit log. "
        "The previous owner's key is revoked (it no longer opens the broker either) and the "
        "new owner's activation window opens; a revoked device stays revoked.",
    )
    device_arguments(p)
    p.add_argument("--to", required=True, metavar="OWNER", help="the new owner")
    reason_option(p)

    p = commands.add(
        "reenable",
        _reenable,
        parents=[database_options()],
        summary="open a new activation window (after a factory reset)",
        description="Open a new activation window for a claimed device. The next "
        "activation issues a new key; the old one stops being valid at that moment.",
    )
    device_arguments(p)
    p.add_argument(
        "--window",
        type=parse_duration,
        metavar="DURATION",
        help="how long the window stays open (default: the model's window)",
    )
    reason_option(p)

    p = commands.add(
        "revoke",
        _revoke,
        parents=[database_options()],
        summary="make a device's key invalid now",
        description="The key stops being valid now; activation answers 'revoked' "
        "until the device is re-enabled.",
    )
    device_arguments(p)
    reason_option(p)


@admin_command()
async def _claim(admin: Admin, args: argparse.Namespace) -> None:
    result = await admin.claim(
        args.vendor, args.model, args.identifier, owner=args.owner, reason=args.reason
    )
    if result.already_yours:
        print(f"{result.identifier} is already claimed by {args.owner}")
    else:
        print(
            f"claimed {result.identifier} for {args.owner}; "
            f"activation window open until {when(result.window_ends_at)}"
        )


@admin_command()
async def _release(admin: Admin, args: argparse.Namespace) -> None:
    result = await admin.release(
        args.vendor, args.model, args.identifier, owner=args.owner, reason=args.reason
    )
    print(f"released {result.identifier} by {args.owner}; its key is no longer valid")
    _warn_if_login_lingers(result)


@admin_command()
async def _transfer(admin: Admin, args: argparse.Namespace) -> None:
    result = await admin.transfer(
        args.vendor, args.model, args.identifier, to=args.to, reason=args.reason
    )
    then = (
        "it stays revoked"
        if result.previous_state == "revoked"
        else "its old key is no longer valid and the device activates again for a new one"
    )
    print(f"transferred {result.identifier} from {result.previous_owner} to {args.to}; {then}")
    _warn_if_login_lingers(result)


@admin_command()
async def _reenable(admin: Admin, args: argparse.Namespace) -> None:
    result = await admin.reenable(
        args.vendor, args.model, args.identifier, window_seconds=args.window, reason=args.reason
    )
    print(
        f"re-enabled {result.identifier}; activation window open until "
        f"{when(result.window_ends_at)}; the next activation issues a new key"
    )


@admin_command()
async def _revoke(admin: Admin, args: argparse.Namespace) -> None:
    result = await admin.revoke(args.vendor, args.model, args.identifier, reason=args.reason)
    print(f"revoked {result.identifier}; activation answers 'revoked' until re-enabled")
    _warn_if_login_lingers(result)


def _warn_if_login_lingers(result: LifecycleResult) -> None:
    if result.login_lingers:
        print(
            f"warning: the broker could not be told; the login {result.login!r} still opens "
            "it until you disable it there (see the log line above)",
            file=sys.stderr,
        )
