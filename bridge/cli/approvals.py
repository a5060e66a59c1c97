"""``bridge approve`` and ``bridge unapprove``: a model's approval list."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge.admin import Admin
from bridge.cli.command import admin_command
from bridge.cli.options import Commands, database_options, model_arguments, reason_option
from bridge.errors import Malformed


def register(commands: Commands) -> None:
    """Add ``approve`` and ``unapprove``."""
    p = commands.add(
        "approve",
        _approve,
        parents=[database_options()],
        summary="approve identifiers for a model",
        description="Put identifiers on a model's approval list, from the command line "
        "or from a file: one identifier per line, or CSV with an 'identifier' column; "
        "any row may be a range FIRST..LAST. Refused rows are reported by line number "
        "(exit status 1) and the others are loaded, in one transaction.",
    )
    model_arguments(p)
    p.add_argument(
        "identifiers", nargs="*", metavar="IDENTIFIER", help="identifiers to approve (or --file)"
    )
    p.add_argument("--file", type=Path, metavar="PATH", help="read identifiers from this file")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="with --file: report what would happen, write nothing",
    )
    reason_option(p)

    p = commands.add(
        "unapprove",
        _unapprove,
        parents=[database_options()],
        summary="take identifiers off a model's approval list",
        description="Remove identifiers from the approval list. Devices that are claimed, "
        "activated or revoked are refused (and nothing is removed) unless --force.",
    )
    model_arguments(p)
    p.add_argument("identifiers", nargs="+", metavar="IDENTIFIER", help="identifiers to remove")
    p.add_argument("--force", action="store_true", help="remove devices in use too")
    reason_option(p)


async def _approve(args: argparse.Namespace) -> int:
    # Checked before the database is opened: a wrong call is answered as one.
    if (args.file is None) == (not args.identifiers):
        raise Malformed("Give identifiers on the command line or --file PATH (one of the two).")
    if args.dry_run and args.file is None:
        raise Malformed("--dry-run applies to --file only.")
    return await (_approve_listed if args.file is None else _approve_file)(args)


@admin_command()
async def _approve_listed(admin: Admin, args: argparse.Namespace) -> None:
    simple = await admin.approve(args.vendor, args.model, args.identifiers, reason=args.reason)
    print(f"approved: {simple.added} added, {simple.already} already approved")


@admin_command()
async def _approve_file(admin: Admin, args: argparse.Namespace) -> int:
    bar = _ProgressBar() if sys.stderr.isatty() else None
    try:
        report = await admin.approve_file(
            args.vendor,
            args.model,
            args.file,
            dry_run=args.dry_run,
            progress=bar,
            reason=args.reason,
        )
    finally:
        if bar is not None:
            bar.close()
    for refusal in report.refused:
        print(f"line {refusal.line}: refused: {refusal.reason}", file=sys.stderr)
    if report.refused_total > len(report.refused):
        print(
            f"... and {report.refused_total - len(report.refused):,} more refused lines",
            file=sys.stderr,
        )
    verb = "would be added" if report.dry_run else "added"
    print(
        f"{'dry run, nothing written: ' if report.dry_run else 'approved: '}"
        f"{report.added} {verb}, {report.already} already approved, "
        f"{report.refused_total} refused"
        + (f", {report.duplicates} duplicate(s) ignored" if report.duplicates else "")
    )
    return 1 if report.refused else 0


class _ProgressBar:
    """A one-line progress bar on stderr (a terminal only)."""

    def __init__(self) -> None:
        self._shown = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        if total < 10_000:  # short files finish before a bar would be read
            return
        width = 30
        filled = width * min(done, total) // total
        sys.stderr.write(
            f"\r{phase:<9} [{'#' * filled}{'.' * (width - filled)}] {done:>10,}/{total:,}"
        )
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")


@admin_command()
async def _unapprove(admin: Admin, args: argparse.Namespace) -> None:
    report = await admin.unapprove(
        args.vendor, args.model, args.identifiers, force=args.force, reason=args.reason
    )
    print(f"unapproved: {len(report.removed)} removed, {len(report.missing)} not approved")
