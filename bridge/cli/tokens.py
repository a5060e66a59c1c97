"""``bridge token create|revoke|list``: the bearer tokens of the HTTP API."""

from __future__ import annotations

import argparse

from bridge.admin import Admin
from bridge.cli.command import admin_command, when
from bridge.cli.options import Commands, database_options


def register(commands: Commands) -> None:
    """Add ``token`` and its actions."""
    token = commands.group(
        "token",
        summary="manage HTTP API tokens",
        description="Create, revoke and list the bearer tokens that HTTP API requests carry.",
    )
    p = token.add(
        "create",
        _create,
        parents=[database_options()],
        summary="create an API token (printed once)",
        description="Create a bearer token for the HTTP API. It is printed once; "
        "only its hash is stored.",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--owner", metavar="OWNER", help="an owner: claims and manages own devices")
    who.add_argument("--vendor", metavar="VENDOR", help="a vendor: manages its own models")
    who.add_argument("--admin", action="store_true", help="an administrator: everything")
    p = token.add(
        "revoke",
        _revoke,
        parents=[database_options()],
        summary="revoke an API token",
        description="Revoke a token by the id `bridge token create` printed.",
    )
    p.add_argument("token_id", metavar="TOKEN_ID", help="as `bridge token create` printed it")
    token.add(
        "list",
        _list,
        parents=[database_options()],
        summary="list API tokens",
        description="Ids, roles and names of tokens.",
    )


@admin_command(audited=False)
async def _create(admin: Admin, args: argparse.Namespace) -> None:
    if args.admin:
        role, subject = "admin", None
    elif args.vendor is not None:
        role, subject = "vendor", args.vendor
    else:
        role, subject = "owner", args.owner
    issued = await admin.create_token(role, subject)
    who = f"{role} {subject}" if subject else "an administrator"
    print(f"created token {issued.record.id} for {who}; it is shown only this once:")
    print(issued.token)


@admin_command(audited=False)
async def _revoke(admin: Admin, args: argparse.Namespace) -> None:
    record = await admin.revoke_token(args.token_id)
    print(
        f"revoked token {record.id} ({record.role}{' ' + record.subject if record.subject else ''})"
    )


@admin_command(audited=False)
async def _list(admin: Admin, args: argparse.Namespace) -> None:
    for r in await admin.tokens():
        state = f"revoked {when(r.revoked_at)}" if r.revoked_at else "active"
        print(f"{r.id}  {r.role:<6}  {r.subject or '-':<24}  created {when(r.created_at)}  {state}")
