"""The ``bridge`` command line: a thin layer over :mod:`bridge.admin`, the service and the client.

Errors go to stderr as ``error: <code>: <sentence>`` with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, NoReturn

from bridge import __version__, embedded, identifiers, logs, tokens
from bridge.admin import Admin
from bridge.client import activate_device
from bridge.config import Settings, load_settings
from bridge.errors import BridgeError, Malformed

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds from ``86400``, ``90s``, ``30m``, ``24h`` or ``7d``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use seconds or a number with s, m, h or d "
            "(e.g. 30m, 24h, 7d)"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors speak like every other error: one line, exit 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"error: usage: {message}\n")


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 (one statement per option)
    db = _Parser(add_help=False)
    db.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL (env BRIDGE_DATABASE_URL; default: embedded server)",
    )
    db.add_argument(
        "--state-dir", metavar="DIR", help="embedded database/broker files (env BRIDGE_STATE_DIR)"
    )
    broker = _Parser(add_help=False)
    broker.add_argument(
        "--mqtt-url",
        metavar="URL",
        help="mqtt://user:pass@host:port or mqtts://… (env BRIDGE_MQTT_URL)",
    )
    broker.add_argument(
        "--topic-prefix",
        metavar="PREFIX",
        help="topic prefix (env BRIDGE_TOPIC_PREFIX; default provision)",
    )

    top = _Parser(
        prog="bridge",
        description="MQTT provisioning bridge: devices trade their sticker number for a key.",
        epilog="Quick start: `bridge serve --dev` in one terminal; `bridge model add`, "
        "`bridge approve`, `bridge claim`, `bridge activate` in another.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "migrate",
        parents=[db],
        help="apply missing database migrations",
        description="Apply the SQL migrations the database is missing. Safe to "
        "run twice and from two processes at once.",
    )
    p.set_defaults(run=_migrate)

    p = sub.add_parser(
        "serve",
        parents=[db, broker],
        help="run the bridge",
        description="Subscribe to activation requests and answer them until SIGTERM/SIGINT.",
    )
    p.add_argument(
        "--share-group",
        metavar="GROUP",
        help="share the load with other bridges via $share/GROUP (env BRIDGE_SHARE_GROUP)",
    )
    p.add_argument(
        "--client-id",
        metavar="ID",
        help="the bridge's MQTT client id, stable across restarts (env BRIDGE_CLIENT_ID)",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        metavar="N",
        help="requests processed at once (env BRIDGE_MAX_IN_FLIGHT; default 64)",
    )
    p.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="allow the insecure development secret when BRIDGE_SECRET is unset",
    )
    p.add_argument(
        "--api",
        action="store_true",
        help="also serve the HTTP API and owner page (see `bridge api`)",
    )
    p.add_argument("--api-host", metavar="HOST", help="API address (env BRIDGE_API_HOST)")
    p.add_argument("--api-port", type=int, metavar="PORT", help="API port (env BRIDGE_API_PORT)")
    p.set_defaults(run=_serve)

    p = sub.add_parser(
        "api",
        parents=[db],
        help="serve the HTTP API and the owner page",
        description="Serve the HTTP API (OpenAPI document at /openapi.json) and the "
        "reference owner page at / until SIGTERM/SIGINT. Requests need a token from "
        "`bridge token create`.",
    )
    p.add_argument(
        "--host",
        dest="api_host",
        metavar="HOST",
        help="address to listen on (env BRIDGE_API_HOST; default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        dest="api_port",
        type=int,
        metavar="PORT",
        help="port to listen on (env BRIDGE_API_PORT; default 8080)",
    )
    p.set_defaults(run=_api)

    token = sub.add_parser("token", help="manage HTTP API tokens").add_subparsers(
        dest="token_command", required=True, metavar="ACTION"
    )
    p = token.add_parser(
        "create",
        parents=[db],
        help="create an API token (printed once)",
        description="Create a bearer token for the HTTP API. It is printed once; "
        "only its hash is stored.",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--owner", metavar="OWNER", help="an owner: claims and manages own devices")
    who.add_argument("--vendor", metavar="VENDOR", help="a vendor: manages its own models")
    who.add_argument("--admin", action="store_true", help="an administrator: everything")
    p.set_defaults(run=_token_create)
    p = token.add_parser(
        "revoke",
        parents=[db],
        help="revoke an API token",
        description="Revoke a token by the id `bridge token create` printed.",
    )
    p.add_argument("token_id", metavar="TOKEN_ID")
    p.set_defaults(run=_token_revoke)
    p = token.add_parser(
        "list", parents=[db], help="list API tokens", description="Ids, roles and names of tokens."
    )
    p.set_defaults(run=_token_list)

    model = sub.add_parser("model", help="manage device models").add_subparsers(
        dest="model_command", required=True, metavar="ACTION"
    )
    p = model.add_parser(
        "add",
        parents=[db],
        help="register a model",
        description="Register a vendor's model and how its devices are identified.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--kind",
        required=True,
        choices=[k.value for k in identifiers.Kind],
        help="which number is on the sticker",
    )
    p.add_argument("--pattern", metavar="REGEX", help="serial numbers must match this regex")
    p.add_argument(
        "--window",
        type=parse_duration,
        default=86_400,
        metavar="DURATION",
        help="activation window after a claim: seconds or 30m, 24h, 7d (default 24h)",
    )
    p.add_argument(
        "--no-claim",
        action="store_true",
        help="devices may activate on approval alone (window opens at approval)",
    )
    p.set_defaults(run=_model_add)

    p = sub.add_parser(
        "approve",
        parents=[db],
        help="approve identifiers for a model",
        description="Put identifiers on a model's approval list.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("identifiers", nargs="+", metavar="IDENTIFIER")
    p.set_defaults(run=_approve)

    p = sub.add_parser(
        "claim",
        parents=[db],
        help="add a device to an owner's account",
        description="Claim a device for an owner; opens its activation window.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("identifier", metavar="IDENTIFIER")
    p.add_argument("--owner", required=True, metavar="OWNER")
    p.set_defaults(run=_claim)

    p = sub.add_parser(
        "show",
        parents=[db],
        help="show one device (never its key)",
        description="State, owner, window end and activation time of one device.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("identifier", metavar="IDENTIFIER")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_show)

    p = sub.add_parser(
        "activate",
        parents=[broker],
        help="activate as a device would",
        description="The reference device client: publish an activation request "
        "and print the reply. Exit status 0 on ok, 1 on an error reply, 2 on timeout.",
    )
    p.add_argument("--vendor", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--identifier", required=True)
    p.add_argument("--client-id", metavar="ID", help="MQTT client id (default: random device-…)")
    p.add_argument("--request-id", metavar="ID", help="request id (default: random)")
    p.add_argument(
        "--seal",
        action="store_true",
        help="send an X25519 public key; the key comes back sealed and is unsealed here",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long (default 10)",
    )
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(run=_activate)
    return top


def _settings(args: argparse.Namespace) -> Settings:
    names = (
        "database_url",
        "state_dir",
        "mqtt_url",
        "topic_prefix",
        "share_group",
        "client_id",
        "max_in_flight",
        "dev",
        "api_host",
        "api_port",
    )
    return load_settings(**{n: getattr(args, n, None) for n in names})


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


async def _migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    async with Admin.connect(settings) as admin:
        applied = await admin.store.migrate()
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from bridge.runtime import serve  # noqa: PLC0415 (keeps aiomqtt out of admin commands)

    logs.configure()
    await serve(_settings(args), api=args.api)
    return 0


async def _api(args: argparse.Namespace) -> int:
    from bridge.runtime import serve_api  # noqa: PLC0415 (as above)

    logs.configure()
    await serve_api(_settings(args))
    return 0


async def _token_create(args: argparse.Namespace) -> int:
    if args.admin:
        role, subject = "admin", None
    elif args.vendor is not None:
        role, subject = "vendor", args.vendor
    else:
        role, subject = "owner", args.owner
    async with Admin.connect(_settings(args)) as admin:
        issued = await tokens.create_token(admin.store, role, subject)
    who = f"{role} {subject}" if subject else "an administrator"
    print(f"created token {issued.record.id} for {who}; it is shown only this once:")
    print(issued.token)
    return 0


async def _token_revoke(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args)) as admin:
        record = await tokens.revoke_token(admin.store, args.token_id)
    print(
        f"revoked token {record.id} ({record.role}{' ' + record.subject if record.subject else ''})"
    )
    return 0


async def _token_list(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args)) as admin:
        records = await admin.store.tokens()
    for r in records:
        state = f"revoked {_when(r.revoked_at)}" if r.revoked_at else "active"
        print(
            f"{r.id}  {r.role:<6}  {r.subject or '-':<24}  created {_when(r.created_at)}  {state}"
        )
    return 0


async def _model_add(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args)) as admin:
        row = await admin.add_model(
            args.vendor,
            args.model,
            kind=args.kind,
            pattern=args.pattern,
            window_seconds=args.window,
            claim_required=not args.no_claim,
        )
    claim = "claim required" if row.claim_required else "no claim needed"
    window = f"window {row.window_seconds}s"
    print(f"added model {row.vendor}/{row.model}: kind {row.kind}, {window}, {claim}")
    return 0


async def _approve(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args)) as admin:
        report = await admin.approve(args.vendor, args.model, args.identifiers)
    print(f"approved: {report.added} added, {report.already} already approved")
    return 0


async def _claim(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args)) as admin:
        result = await admin.claim(args.vendor, args.model, args.identifier, owner=args.owner)
    if result.already_yours:
        print(f"{result.identifier} is already claimed by {args.owner}")
    else:
        print(
            f"claimed {result.identifier} for {args.owner}; "
            f"activation window open until {_when(result.window_ends_at)}"
        )
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args)) as admin:
        device = await admin.show(args.vendor, args.model, args.identifier)
    fields = {k: v for k, v in asdict(device).items() if k != "key_id"}
    if args.json:
        print(
            json.dumps(
                fields, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)
            )
        )
    else:
        for name, value in fields.items():
            shown = (
                _when(value)
                if isinstance(value, datetime)
                else (value if value is not None else "-")
            )
            print(f"{name + ':':<16}{shown}")
    return 0


async def _activate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        result = await activate_device(
            embedded.client_endpoint(settings),
            prefix=settings.topic_prefix,
            vendor=args.vendor,
            model=args.model,
            identifier=args.identifier,
            client_id=args.client_id,
            request_id=args.request_id,
            seal=args.seal,
            timeout=args.timeout,
        )
    except TimeoutError:
        print(
            f"error: timeout: no reply within {args.timeout:g} seconds; is `bridge serve` running?",
            file=sys.stderr,
        )
        return 2
    reply = dict(result.reply)
    if args.json:
        if result.key is not None and "sealed_key" in reply:
            reply["key"] = result.key  # unsealed here, for the person at the terminal
        print(json.dumps(reply))
    elif result.ok:
        print(f"ok: {reply.get('vendor')}/{reply.get('model')} {reply.get('identifier')}")
        print(f"key: {result.key}{' (was sealed)' if 'sealed_key' in reply else ''}")
    if not result.ok:
        if not args.json:
            print(f"error: {reply.get('code')}: {reply.get('message')}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.run
    try:
        return _run(run(args))
    except BridgeError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up)
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


__all__ = ["Malformed", "main", "parse_duration"]
