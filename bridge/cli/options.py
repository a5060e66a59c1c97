"""How the command line reads its arguments: the parser, shared options, value types, settings.

Every command group's module builds its parsers from these pieces, so a shared option
(``--database-url``, ``--dev`` …) is spelled and explained once.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from bridge.config import Settings, load_settings
from bridge.text import REASON_MAX

#: A command's handler: the parsed arguments in, the exit status out.
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

_DURATION = re.compile(r"(\d+)([smhd]?)")
_LONGEST_SECONDS = 2**31 - 1
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors speak like every other error: one line, exit 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"error: usage: {message}\n")


class Commands:
    """Where a command group's module adds its subcommands, each beside its handler."""

    # argparse names no public type for what add_subparsers returns.
    def __init__(self, action: argparse._SubParsersAction[Parser]) -> None:
        self._action = action

    def add(
        self,
        name: str,
        run: Handler,
        *,
        summary: str,
        description: str,
        parents: Sequence[Parser] = (),
    ) -> argparse.ArgumentParser:
        """A subcommand: ``summary`` is its line in the list, ``description`` its --help."""
        parser = self._action.add_parser(
            name, parents=list(parents), help=summary, description=description
        )
        parser.set_defaults(run=run)
        return parser

    def group(self, name: str, *, summary: str, description: str) -> Commands:
        """A subcommand with actions of its own (``bridge token create``)."""
        parser = self._action.add_parser(name, help=summary, description=description)
        return Commands(
            parser.add_subparsers(
                dest=f"{name.replace('-', '_')}_action", required=True, metavar="ACTION"
            )
        )


def database_options() -> Parser:
    """The options of every command that opens the database."""
    parent = Parser(add_help=False)
    parent.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL (env BRIDGE_DATABASE_URL; default: embedded server)",
    )
    parent.add_argument(
        "--state-dir", metavar="DIR", help="embedded database/broker files (env BRIDGE_STATE_DIR)"
    )
    return parent


def broker_options() -> Parser:
    """The options of every command that talks to the broker."""
    parent = Parser(add_help=False)
    parent.add_argument(
        "--mqtt-url",
        metavar="URL",
        help="mqtt://user:pass@host:port or mqtts://… (env BRIDGE_MQTT_URL)",
    )
    parent.add_argument(
        "--mqtt-ca-file",
        metavar="FILE",
        help="CA certificate(s) of the broker's TLS certificate (env BRIDGE_MQTT_CA_FILE)",
    )
    parent.add_argument(
        "--topic-prefix",
        metavar="PREFIX",
        help="topic prefix (env BRIDGE_TOPIC_PREFIX; default provision)",
    )
    return parent


def secret_options() -> Parser:
    """``--dev`` for the commands that need the server secret besides ``serve``."""
    # The server secret decrypts enrollment keys: the commands that need it take --dev
    # as `serve` does, so a development bridge and its commands agree on one secret.
    parent = Parser(add_help=False)
    parent.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="development only, as `bridge serve --dev`: the insecure development secret "
        "when BRIDGE_SECRET is unset, or a weak BRIDGE_SECRET",
    )
    return parent


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """VENDOR MODEL, the positional arguments that name a model."""
    parser.add_argument("vendor", metavar="VENDOR")
    parser.add_argument("model", metavar="MODEL")


def device_arguments(parser: argparse.ArgumentParser) -> None:
    """VENDOR MODEL IDENTIFIER, the positional arguments that name a device."""
    model_arguments(parser)
    parser.add_argument(
        "identifier", metavar="IDENTIFIER", help="the number on the device's sticker, any spelling"
    )


def reason_option(parser: argparse.ArgumentParser) -> None:
    """``--reason TEXT``: why, kept in the audit row of the change."""
    parser.add_argument(
        "--reason",
        metavar="TEXT",
        help=f"why; recorded in the audit log (1 to {REASON_MAX} printable characters)",
    )


def parse_duration(text: str) -> int:
    """Seconds from ``86400``, ``90s``, ``30m``, ``24h`` or ``7d``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use seconds or a number with s, m, h or d "
            "(e.g. 30m, 24h, 7d)"
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > _LONGEST_SECONDS:  # windows are stored as a 32-bit count of seconds
        raise argparse.ArgumentTypeError(f"{text!r} is longer than {_LONGEST_SECONDS} seconds")
    return seconds


def parse_since(text: str) -> datetime:
    """An aware UTC datetime from ISO 8601 (naive means UTC) or a duration ago (``24h``)."""
    try:
        ago: int | None = parse_duration(text)
    except argparse.ArgumentTypeError:
        ago = None
    try:
        if ago is not None:
            return datetime.now(UTC) - timedelta(seconds=ago)
        when = datetime.fromisoformat(text.strip())
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time; use ISO 8601 (2026-11-26T04:00) or a duration ago (24h)"
        ) from None
    except OverflowError:
        # Checked here rather than overflowing later in the database driver.
        raise argparse.ArgumentTypeError(
            f"{text!r} is outside the years 1 to 9999 in UTC"
        ) from None


def settings(args: argparse.Namespace) -> Settings:
    """The settings, with every option named like a setting overriding the environment."""
    # A flag whose dest is a setting's name is that setting's flag (the README's
    # configuration table is built on the same rule), so a new one needs no list here.
    return load_settings(**{name: getattr(args, name, None) for name in Settings.model_fields})
