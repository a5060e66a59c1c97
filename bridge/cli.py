"""The ``bridge`` command line: a thin layer over :mod:`bridge.admin`, the service and the client.

Errors go to stderr as ``error: <code>: <sentence>`` with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from bridge import __version__, brokerfiles, embedded, identifiers, logs, tokens
from bridge.admin import STATES, Admin, LifecycleResult
from bridge.client import activate_device
from bridge.config import Settings, load_settings
from bridge.errors import BridgeError, Malformed, Unavailable

_DURATION = re.compile(r"(\d+)([smhd]?)")
_LONGEST_SECONDS = 2**31 - 1
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


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
        "--mqtt-ca-file",
        metavar="FILE",
        help="CA certificate(s) of the broker's TLS certificate (env BRIDGE_MQTT_CA_FILE)",
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
        "`bridge approve`, `bridge claim`, `bridge activate` in another. `bridge COMMAND "
        "--help` explains each command.",
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
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep trying this long while the database cannot be reached (default 0)",
    )
    p.set_defaults(run=_migrate)

    p = sub.add_parser(
        "stop-db",
        parents=[db],
        help="stop the embedded PostgreSQL",
        description="Stop the embedded PostgreSQL that `serve` and the other commands "
        "start under the state directory and leave running. Stop `serve` first.",
    )
    p.set_defaults(run=_stop_db)

    p = sub.add_parser(
        "broker-files",
        help="write a Mosquitto's configuration and credential files",
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
    p.set_defaults(run=_broker_files)

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
        help="development only: allow the insecure development secret when BRIDGE_SECRET "
        "is unset, and a BRIDGE_SECRET that is short or published in this repository",
    )
    p.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz and /readyz here (env BRIDGE_METRICS_ADDR; default off)",
    )
    p.add_argument(
        "--api",
        action="store_true",
        help="also serve the HTTP API and owner page (see `bridge api`)",
    )
    p.add_argument("--api-host", metavar="HOST", help="API address (env BRIDGE_API_HOST)")
    p.add_argument("--api-port", type=int, metavar="PORT", help="API port (env BRIDGE_API_PORT)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N bridge processes in one share group, each its own client id (default 1)",
    )
    p.set_defaults(run=_serve)

    p = sub.add_parser(
        "check",
        parents=[db, broker],
        help="is the bridge ready? (exit 0 if so, 1 if not)",
        description="With BRIDGE_METRICS_ADDR: ask the running bridge's /readyz (broker "
        "subscribed, database reachable). Without it: check that the database and the broker "
        "answer. Exit status 0 when ready, 1 when not; for scripts and container health checks.",
    )
    p.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="the running bridge's metrics listener (env BRIDGE_METRICS_ADDR)",
    )
    p.set_defaults(run=_check)

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
    p.add_argument(
        "--plaintext-keys",
        action="store_true",
        help="also deliver keys in plaintext to requests without a public key, for devices "
        "that cannot do X25519 (default: sealed only; such requests get seal_required)",
    )
    p.set_defaults(run=_model_add)

    # The server secret decrypts enrollment keys: the commands that need it take --dev
    # as `serve` does, so a development bridge and its commands agree on one secret.
    secret = _Parser(add_help=False)
    secret.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="development only, as `bridge serve --dev`: the insecure development secret "
        "when BRIDGE_SECRET is unset, or a weak BRIDGE_SECRET",
    )
    enrollment = sub.add_parser(
        "enrollment-key",
        help="a model's enrollment key: require device proof beyond the sticker",
        description="A model with an enrollment key requires device proof: each device "
        "carries a factory secret (printed by `bridge device-secret`) and proves it with each "
        "activation request; a request without a valid proof is answered like a number that "
        "is not approved. The key is 32 random bytes, stored only encrypted under "
        "BRIDGE_SECRET, and never shown.",
    ).add_subparsers(dest="enrollment_command", required=True, metavar="ACTION")
    p = enrollment.add_parser(
        "create",
        parents=[db, secret],
        help="create a model's first enrollment key; the model then requires device proof",
        description="Create the model's enrollment key. From now on every activation of the "
        "model must carry a valid proof: do this before the first device leaves the factory, "
        "since devices without a secret can no longer activate.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.set_defaults(run=_enrollment_create)
    p = enrollment.add_parser(
        "rotate",
        parents=[db, secret],
        help="add a new enrollment key generation for the devices made from now on",
        description="Add a new generation of the model's enrollment key: `bridge "
        "device-secret` prints secrets from it from now on. The previous generations stay "
        "accepted, so devices already made keep working, until they are retired "
        "(--retire-previous, or `bridge enrollment-key retire`).",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--retire-previous",
        action="store_true",
        help="stop accepting every previous generation now (a leaked key): devices made with "
        "them can no longer activate until they get a new secret",
    )
    p.set_defaults(run=_enrollment_rotate)
    p = enrollment.add_parser(
        "retire",
        parents=[db],
        help="stop accepting an older generation of the enrollment key",
        description="Retire one older generation: devices whose secret derives from it can "
        "no longer activate. The newest generation is replaced by rotating, never retired.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("generation", type=int, metavar="GENERATION", help="as `list` shows it")
    p.set_defaults(run=_enrollment_retire)
    p = enrollment.add_parser(
        "list",
        parents=[db],
        help="the generations of a model's enrollment key (never a key)",
        description="Generations of the model's enrollment key, newest first, with when "
        "each was created and retired.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.set_defaults(run=_enrollment_list)

    p = sub.add_parser(
        "device-secret",
        parents=[db, secret],
        help="print a device's factory secret (models that require device proof)",
        description="Print the factory secret of one device, 64 lowercase hex characters and "
        "nothing else on stdout, for the factory line to burn into its firmware: "
        "HMAC-SHA256(the model's newest enrollment key, the canonical identifier). Any "
        "spelling of the identifier gives the same secret. Audited (never the secret).",
    )
    _device_arguments(p)
    p.set_defaults(run=_device_secret)

    p = sub.add_parser(
        "approve",
        parents=[db],
        help="approve identifiers for a model",
        description="Put identifiers on a model's approval list, from the command line "
        "or from a file: one identifier per line, or CSV with an 'identifier' column; "
        "any row may be a range FIRST..LAST. Refused rows are reported by line number "
        "(exit status 1) and the others are loaded, in one transaction.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("identifiers", nargs="*", metavar="IDENTIFIER")
    p.add_argument("--file", type=Path, metavar="PATH", help="read identifiers from this file")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="with --file: report what would happen, write nothing",
    )
    p.set_defaults(run=_approve)

    p = sub.add_parser(
        "unapprove",
        parents=[db],
        help="take identifiers off a model's approval list",
        description="Remove identifiers from the approval list. Devices that are claimed, "
        "activated or revoked are refused (and nothing is removed) unless --force.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("identifiers", nargs="+", metavar="IDENTIFIER")
    p.add_argument("--force", action="store_true", help="remove devices in use too")
    p.set_defaults(run=_unapprove)

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
        "release",
        parents=[db],
        help="an owner gives a device up",
        description="The owner gives the device up: its key stops being valid and "
        "another owner may claim it. Only the device's owner can release it.",
    )
    _device_arguments(p)
    p.add_argument("--owner", required=True, metavar="OWNER")
    p.set_defaults(run=_release)

    p = sub.add_parser(
        "transfer",
        parents=[db],
        help="move a claimed device to another owner (administrator)",
        description="Move a claimed device to another owner; recorded in the audit log. "
        "The previous owner's key is revoked (it no longer opens the broker either) and the "
        "new owner's activation window opens; a revoked device stays revoked.",
    )
    _device_arguments(p)
    p.add_argument("--to", required=True, metavar="OWNER")
    p.set_defaults(run=_transfer)

    p = sub.add_parser(
        "reenable",
        parents=[db],
        help="open a new activation window (after a factory reset)",
        description="Open a new activation window for a claimed device. The next "
        "activation issues a new key; the old one stops being valid at that moment.",
    )
    _device_arguments(p)
    p.add_argument(
        "--window",
        type=parse_duration,
        metavar="DURATION",
        help="how long the window stays open (default: the model's window)",
    )
    p.set_defaults(run=_reenable)

    p = sub.add_parser(
        "revoke",
        parents=[db],
        help="make a device's key invalid now",
        description="The key stops being valid now; activation answers 'revoked' "
        "until the device is re-enabled.",
    )
    _device_arguments(p)
    p.set_defaults(run=_revoke)

    p = sub.add_parser(
        "list",
        parents=[db],
        help="list a model's devices, a page at a time",
        description="Devices of a model in identifier order (never a key). For the next "
        "page, pass the last identifier shown as --after.",
    )
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--owner", metavar="OWNER")
    p.add_argument("--after", metavar="IDENTIFIER", help="start after this identifier")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="page size (default 100)")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(run=_list)

    p = sub.add_parser(
        "audit",
        parents=[db],
        help="history of activations and administrative actions",
        description="Audit entries matching every filter given, newest first (never a key).",
    )
    p.add_argument("--vendor", metavar="V")
    p.add_argument("--model", metavar="M")
    p.add_argument(
        "--identifier",
        metavar="X",
        help="any spelling; normalized by the model's kind when --vendor and --model are given",
    )
    p.add_argument("--owner", metavar="O")
    p.add_argument("--client-id", metavar="C")
    p.add_argument("--code", metavar="CODE", help="outcome code, e.g. ok, not_approved, revoked")
    p.add_argument(
        "--since",
        type=parse_since,
        metavar="TIME",
        help="ISO 8601 time (UTC unless it says otherwise) or a duration ago: 30m, 24h, 7d",
    )
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (default 100)")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(run=_audit)

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
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long (default 10)",
    )
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(run=_activate)
    return top


def _device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("vendor", metavar="VENDOR")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("identifier", metavar="IDENTIFIER")


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


def _actor() -> str:
    # Who ran the command, for the audit log.
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def _settings(args: argparse.Namespace) -> Settings:
    names = (
        "database_url",
        "state_dir",
        "mqtt_url",
        "mqtt_ca_file",
        "topic_prefix",
        "share_group",
        "client_id",
        "max_in_flight",
        "dev",
        "metrics_addr",
        "api_host",
        "api_port",
    )
    return load_settings(**{n: getattr(args, n, None) for n in names})


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


async def _migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            async with Admin.connect(settings) as admin:
                applied = await admin.store.migrate()
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
    print(embedded.stop_database(_settings(args)))
    return 0


def _owner(text: str) -> tuple[int, int]:
    try:
        return brokerfiles.parse_owner(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _broker_files(args: argparse.Namespace) -> int:
    written = brokerfiles.write_broker_files(
        _settings(args), args.directory, plugin=args.plugin, tls_dir=args.tls_dir, owner=args.owner
    )
    print(f"wrote {', '.join(p.name for p in written)} in {args.directory}")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from bridge.runtime import serve  # noqa: PLC0415 (keeps aiomqtt out of admin commands)

    logs.configure()
    if args.workers != 1:
        from bridge.workers import supervise  # noqa: PLC0415 (as above)

        await supervise(_settings(args), args.workers, api=args.api)
        return 0
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


async def _check(args: argparse.Namespace) -> int:
    from bridge import health  # noqa: PLC0415 (keeps prometheus_client out of other commands)

    settings = _settings(args)
    if settings.metrics_addr:
        readiness = await health.ask(settings.metrics_addr)
    else:
        readiness = await health.check_directly(settings)
    print("ready" if readiness.ready else "not ready")
    for name, state in readiness.parts().items():
        print(f"{name}: {state}")
    if not readiness.ready:
        print(f"error: unavailable: {readiness.sentence()}", file=sys.stderr)
        return 1
    return 0


async def _model_add(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        row = await admin.add_model(
            args.vendor,
            args.model,
            kind=args.kind,
            pattern=args.pattern,
            window_seconds=args.window,
            claim_required=not args.no_claim,
            plaintext_keys=args.plaintext_keys,
        )
    claim = "claim required" if row.claim_required else "no claim needed"
    window = f"window {row.window_seconds}s"
    delivery = "keys sealed or plaintext" if row.plaintext_keys else "keys sealed only"
    print(f"added model {row.vendor}/{row.model}: kind {row.kind}, {window}, {claim}, {delivery}")
    return 0


async def _enrollment_create(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        generation = await admin.create_enrollment_key(args.vendor, args.model)
    print(
        f"created enrollment key generation {generation} of {args.vendor}/{args.model}; "
        "its activations now require device proof (secrets: bridge device-secret)"
    )
    return 0


async def _enrollment_rotate(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        generation = await admin.rotate_enrollment_key(
            args.vendor, args.model, retire_previous=args.retire_previous
        )
    previous = (
        "previous generations are retired: devices made with them can no longer activate"
        if args.retire_previous
        else "previous generations stay accepted until retired, so devices already made "
        "keep working"
    )
    print(
        f"created enrollment key generation {generation} of {args.vendor}/{args.model}; "
        f"new device secrets derive from it; {previous}"
    )
    return 0


async def _enrollment_retire(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        await admin.retire_enrollment_key(args.vendor, args.model, args.generation)
    print(
        f"retired enrollment key generation {args.generation} of {args.vendor}/{args.model}; "
        "devices whose secret derives from it can no longer activate"
    )
    return 0


async def _enrollment_list(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        generations = await admin.enrollment_keys(args.vendor, args.model)
    if not generations:
        print(f"{args.vendor}/{args.model} has no enrollment key (no device proof required)")
    for g in generations:
        state = f"retired {_when(g.retired_at)}" if g.retired_at else "accepted"
        print(f"generation {g.generation:<4} created {_when(g.created_at)}  {state}")
    return 0


async def _device_secret(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        _, secret_hex = await admin.device_secret(args.vendor, args.model, args.identifier)
    print(secret_hex)
    return 0


async def _approve(args: argparse.Namespace) -> int:
    if (args.file is None) == (not args.identifiers):
        raise Malformed("Give identifiers on the command line or --file PATH (one of the two).")
    if args.dry_run and args.file is None:
        raise Malformed("--dry-run applies to --file only.")
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        if args.file is None:
            simple = await admin.approve(args.vendor, args.model, args.identifiers)
            print(f"approved: {simple.added} added, {simple.already} already approved")
            return 0
        bar = _ProgressBar() if sys.stderr.isatty() else None
        try:
            report = await admin.approve_file(
                args.vendor, args.model, args.file, dry_run=args.dry_run, progress=bar
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


async def _unapprove(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        report = await admin.unapprove(args.vendor, args.model, args.identifiers, force=args.force)
    print(f"unapproved: {len(report.removed)} removed, {len(report.missing)} not approved")
    return 0


async def _release(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        result = await admin.release(args.vendor, args.model, args.identifier, owner=args.owner)
    print(f"released {result.identifier} by {args.owner}; its key is no longer valid")
    _warn_if_login_lingers(result)
    return 0


async def _transfer(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        result = await admin.transfer(args.vendor, args.model, args.identifier, to=args.to)
    then = (
        "it stays revoked"
        if result.previous_state == "revoked"
        else "its old key is no longer valid and the device activates again for a new one"
    )
    print(f"transferred {result.identifier} from {result.previous_owner} to {args.to}; {then}")
    _warn_if_login_lingers(result)
    return 0


async def _reenable(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        result = await admin.reenable(
            args.vendor, args.model, args.identifier, window_seconds=args.window
        )
    print(
        f"re-enabled {result.identifier}; activation window open until "
        f"{_when(result.window_ends_at)}; the next activation issues a new key"
    )
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        result = await admin.revoke(args.vendor, args.model, args.identifier)
    print(f"revoked {result.identifier}; activation answers 'revoked' until re-enabled")
    _warn_if_login_lingers(result)
    return 0


def _warn_if_login_lingers(result: LifecycleResult) -> None:
    if result.login_lingers:
        print(
            f"warning: the broker could not be told; the login {result.login!r} still opens "
            "it until you disable it there (see the log line above)",
            file=sys.stderr,
        )


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else str(value)


async def _list(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
        devices = await admin.list_devices(
            args.vendor,
            args.model,
            state=args.state,
            owner=args.owner,
            after=args.after,
            limit=args.limit,
        )
    rows = [{k: v for k, v in asdict(d).items() if k != "key_id"} for d in devices]
    if args.json:
        print(json.dumps(rows, default=_jsonable))
    else:
        for d in devices:
            print(
                f"{d.identifier:<24} {d.state:<10} {d.owner or '-':<20} "
                f"window {_when(d.window_ends_at)}  activated {_when(d.activated_at)}"
            )
    if len(devices) == args.limit:
        print(f"more: --after {devices[-1].identifier}", file=sys.stderr)
    return 0


async def _audit(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
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
    if args.json:
        print(json.dumps([asdict(e) for e in entries], default=_jsonable))
        return 0
    for e in entries:
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
                ("last", _when(e.last_at) if e.count > 1 else None),
            )
            if value
        )
        print(
            f"{_when(e.at)}  {e.action:<10} {e.code:<18} {where} {e.identifier or '-'}  "
            f"{extras}{'  (' + e.detail + ')' if e.detail else ''}"
        )
    return 0


async def _claim(args: argparse.Namespace) -> int:
    async with Admin.connect(_settings(args), actor=_actor()) as admin:
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
            seal=not args.plaintext,
            device_secret=_read_device_secret(args.device_secret_file),
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
    # The standard event loop, even where uvloop is installed: aiomqtt drives paho's
    # socket through add_reader/add_writer, and uvloop answers an error on such a socket
    # (a TCP reset from the broker) by closing its poll handle without telling the
    # reader, which left `serve` connected to nothing for good (issue 12).
    return asyncio.run(coro)


__all__ = ["Malformed", "main", "parse_duration"]
