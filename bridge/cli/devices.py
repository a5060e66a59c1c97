"""``bridge list``, ``bridge audit`` and ``bridge show``: read devices and the audit log."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from datetime import datetime

from bridge.admin import STATES, Admin
from bridge.cli.command import admin_command, emit, when
from bridge.cli.options import (
    Commands,
    database_options,
    device_arguments,
    model_arguments,
    parse_since,
)
from bridge.records import AuditRecord


def register(commands: Commands) -> None:
    """Add ``list``, ``audit`` and ``show``."""
    p = commands.add(
        "list",
        _list,
        parents=[database_options()],
        summary="list a model's devices, a page at a time",
        description="Devices of a model in identifier order (never a key). For the next "
        "page, pass the last identifier shown as --after.",
    )
    model_arguments(p)
    p.add_argument("--state", choices=STATES, help="only devices in this state")
    p.add_argument("--owner", metavar="OWNER", help="only this owner's devices")
    p.add_argument("--after", metavar="IDENTIFIER", help="start after this identifier")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="page size (default 100)")
    p.add_argument("--json", action="store_true", help="print a JSON array")

    p = commands.add(
        "audit",
        _audit,
        parents=[database_options()],
        summary="history of activations and administrative actions",
        description="Audit entries matching every filter given, newest first (never a key).",
    )
    p.add_argument("--vendor", metavar="VENDOR", help="only entries of this vendor's models")
    p.add_argument("--model", metavar="MODEL", help="only entries of models of this name")
    p.add_argument(
        "--identifier",
        metavar="IDENTIFIER",
        help="any spelling; normalized by the model's kind when --vendor and --model are given",
    )
    p.add_argument("--owner", metavar="OWNER", help="only entries about this owner")
    p.add_argument(
        "--client-id", metavar="ID", help="only requests from this device's MQTT client id"
    )
    p.add_argument("--code", metavar="CODE", help="outcome code, e.g. ok, not_approved, revoked")
    p.add_argument(
        "--since",
        type=parse_since,
        metavar="TIME",
        help="ISO 8601 time (UTC unless it says otherwise) or a duration ago: 30m, 24h, 7d",
    )
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (default 100)")
    p.add_argument("--json", action="store_true", help="print a JSON array")

    p = commands.add(
        "show",
        _show,
        parents=[database_options()],
        summary="show one device (never its key)",
        description="State, owner, window end and activation time of one device.",
    )
    device_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")


@admin_command()
async def _list(admin: Admin, args: argparse.Namespace) -> None:
    devices = await admin.list_devices(
        args.vendor,
        args.model,
        state=args.state,
        owner=args.owner,
        after=args.after,
        limit=args.limit,
    )
    emit(
        args,
        [{k: v for k, v in asdict(d).items() if k != "key_id"} for d in devices],
        (
            f"{d.identifier:<24} {d.state:<10} {d.owner or '-':<20} "
            f"window {when(d.window_ends_at)}  activated {when(d.activated_at)}"
            for d in devices
        ),
    )
    if len(devices) == args.limit:
        print(f"more: --after {devices[-1].identifier}", file=sys.stderr)


@admin_command()
async def _audit(admin: Admin, args: argparse.Namespace) -> None:
    entries = await admin.audit(
        vendor=args.vendor,
        model=args.model,
        identifier=args.identifier,
        owner=args.owner,
        client_id=args.client_id,
        code=args.code,
        since=args.since,
        limit=args.limit,
    )
    emit(args, [asdict(e) for e in entries], (_audit_line(e) for e in entries))


def _audit_line(e: AuditRecord) -> str:
    where = f"{e.vendor}/{e.model}" if e.vendor else "-"
    extras = " ".join(
        f"{name}={value}"
        for name, value in (
            ("presented", e.identifier_presented),
            ("client", e.client_id),
            ("request", e.request_id),
            ("owner", e.owner),
            ("by", e.actor),
            ("count", e.count if e.count > 1 else None),
            ("last", when(e.last_at) if e.count > 1 else None),
        )
        if value
    )
    return (
        f"{when(e.at)}  {e.action:<10} {e.code:<18} {where} {e.identifier or '-'}  "
        f"{extras}{'  (' + e.detail + ')' if e.detail else ''}"
    )


@admin_command(audited=False)
async def _show(admin: Admin, args: argparse.Namespace) -> None:
    device = await admin.show(args.vendor, args.model, args.identifier)
    fields = {k: v for k, v in asdict(device).items() if k != "key_id"}
    emit(
        args,
        fields,
        (f"{name + ':':<16}{_shown(value)}" for name, value in fields.items()),
    )


def _shown(value: object) -> object:
    if isinstance(value, datetime):
        return when(value)
    return value if value is not None else "-"
