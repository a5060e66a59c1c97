"""``bridge activate``: the reference device client, activating as a device would."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bridge import embedded, mqtt
from bridge.cli.options import Commands, broker_options, settings
from bridge.client import activate_device
from bridge.errors import Malformed, Unavailable

#: Exit status when no reply came in time (1 is an error reply).
TIMEOUT_STATUS = 2


def register(commands: Commands) -> None:
    """Add ``activate``."""
    p = commands.add(
        "activate",
        _activate,
        parents=[broker_options()],
        summary="activate as a device would",
        description="The reference device client: publish an activation request "
        "and print the reply. Exit status 0 on ok, 1 on an error reply, 2 on timeout.",
    )
    p.add_argument("--vendor", required=True, help="the device's vendor, as registered")
    p.add_argument("--model", required=True, help="the device's model, as registered")
    p.add_argument(
        "--identifier", required=True, help="the number on the device's sticker, any spelling"
    )
    p.add_argument("--client-id", metavar="ID", help="MQTT client id (default: random device-…)")
    p.add_argument("--request-id", metavar="ID", help="request id (default: random)")
    delivery = p.add_mutually_exclusive_group()
    delivery.add_argument(
        "--seal",
        action="store_true",
        help="send an X25519 public key; the key comes back sealed and is unsealed here "
        "(the default)",
    )
    delivery.add_argument(
        "--plaintext",
        action="store_true",
        help="send no public key and ask for the key in plaintext (only models created "
        "with --plaintext-keys grant it)",
    )
    p.add_argument(
        "--device-secret-file",
        metavar="FILE",
        help="file holding the device's factory secret (`bridge device-secret` output; "
        "'-' reads stdin): the request carries its proof. Never a plain flag: it would show "
        "in `ps`",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long (default 10)",
    )
    p.add_argument("--json", action="store_true", help="print the reply as JSON")


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def _read_device_secret(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise Malformed(f"The device secret file {path!r} cannot be read ({exc}).") from exc
    text = text.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        # The text is a secret, or nearly: never echoed.
        raise Malformed(
            f"The device secret file {path!r} must hold the 64 hex characters "
            "that `bridge device-secret` printed, and nothing else."
        )
    return bytes.fromhex(text)


async def _activate(args: argparse.Namespace) -> int:
    config = settings(args)
    endpoint = embedded.client_endpoint(config)
    try:
        result = await activate_device(
            endpoint,
            prefix=config.topic_prefix,
            vendor=args.vendor,
            model=args.model,
            identifier=args.identifier,
            client_id=args.client_id,
            request_id=args.request_id,
            seal=not args.plaintext,
            device_secret=_read_device_secret(args.device_secret_file),
            timeout=args.timeout,
        )
    except TimeoutError:
        print(
            f"error: timeout: no reply within {args.timeout:g} seconds; is `bridge serve` running?",
            file=sys.stderr,
        )
        return TIMEOUT_STATUS
    except mqtt.MqttError as exc:  # aiomqtt's, translated here: the client raises it as is
        raise Unavailable(
            f"The broker at {endpoint.host}:{endpoint.port} cannot be reached or refused the "
            f"connection ({exc})."
        ) from exc
    reply = dict(result.reply)
    if args.json:
        if result.key is not None and "sealed_key" in reply:
            reply["key"] = result.key  # unsealed here, for the person at the terminal
        print(json.dumps(reply))
    elif result.ok and result.key is None:
        print(
            "error: sealed: the key came back sealed to another public key (the reply stored "
            "for an earlier run with this request id); it cannot be read here",
            file=sys.stderr,
        )
        return 1
    elif result.ok:
        print(f"ok: {reply.get('vendor')}/{reply.get('model')} {reply.get('identifier')}")
        print(f"key: {result.key}{' (was sealed)' if 'sealed_key' in reply else ''}")
    if not result.ok:
        if not args.json:
            print(f"error: {reply.get('code')}: {reply.get('message')}", file=sys.stderr)
        return 1
    return 0
