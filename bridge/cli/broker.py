"""``bridge broker-files``: the files of a Mosquitto beside the bridge (config, logins, ACL)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bridge import brokerfiles
from bridge.cli.options import Commands, settings


def register(commands: Commands) -> None:
    """Add ``broker-files``."""
    p = commands.add(
        "broker-files",
        _broker_files,
        summary="write a Mosquitto's configuration and credential files",
        description="Write mosquitto.conf, the password file, the ACL and the "
        "dynamic-security file for a broker beside the bridge (the compose file's "
        "broker-init). Logins come from BRIDGE_MQTT_URL and BRIDGE_DYNSEC_USERNAME/"
        "PASSWORD; an existing dynamic-security file keeps its device logins.",
    )
    p.add_argument("directory", type=Path, metavar="DIR", help="the broker's working directory")
    p.add_argument(
        "--plugin",
        type=Path,
        metavar="PATH",
        help="the dynamic-security plugin as the broker sees it (default: none)",
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        metavar="DIR",
        help="where the broker finds server.crt and server.key (default: no TLS listener)",
    )
    p.add_argument(
        "--owner", type=_owner, metavar="UID:GID", help="give the files to the broker's user"
    )


def _owner(text: str) -> tuple[int, int]:
    try:
        return brokerfiles.parse_owner(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _broker_files(args: argparse.Namespace) -> int:
    written = brokerfiles.write_broker_files(
        settings(args), args.directory, plugin=args.plugin, tls_dir=args.tls_dir, owner=args.owner
    )
    print(f"wrote {', '.join(p.name for p in written)} in {args.directory}")
    return 0
