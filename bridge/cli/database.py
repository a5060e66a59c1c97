"""``bridge migrate`` and ``bridge stop-db``: the database's schema and the embedded server."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bridge import embedded
from bridge.admin import Admin
from bridge.cli.options import Commands, database_options, settings
from bridge.errors import Unavailable


def register(commands: Commands) -> None:
    """Add ``migrate`` and ``stop-db``."""
    p = commands.add(
        "migrate",
        _migrate,
        parents=[database_options()],
        summary="apply missing database migrations",
        description="Apply the SQL migrations the database is missing. Safe to "
        "run twice and from two processes at once.",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep trying this long while the database cannot be reached (default 0)",
    )
    commands.add(
        "stop-db",
        _stop_db,
        parents=[database_options()],
        summary="stop the embedded PostgreSQL",
        description="Stop the embedded PostgreSQL that `serve` and the other commands "
        "start under the state directory and leave running. Stop `serve` first.",
    )


async def _migrate(args: argparse.Namespace) -> int:
    config = settings(args)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            async with Admin.connect(config) as admin:
                applied = await admin.migrate()
                unusable = await admin.unusable_patterns()
            break
        except Unavailable:
            # A database container still starting: its engine may not wait for it.
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(1)
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    for sentence in unusable:
        print(f"warning: {sentence}", file=sys.stderr)
    return 0


async def _stop_db(args: argparse.Namespace) -> int:
    print(embedded.stop_database(settings(args)))
    return 0
