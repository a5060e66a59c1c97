"""``bridge serve``, ``check`` and ``api``: run the bridge, or ask whether it is ready."""

from __future__ import annotations

import argparse
import sys

from bridge import logs
from bridge.cli.options import Commands, broker_options, database_options, settings


def register(commands: Commands) -> None:
    """Add ``serve``, ``check`` and ``api``."""
    p = commands.add(
        "serve",
        _serve,
        parents=[database_options(), broker_options()],
        summary="run the bridge",
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

    p = commands.add(
        "check",
        _check,
        parents=[database_options(), broker_options()],
        summary="is the bridge ready? (exit 0 if so, 1 if not)",
        description="With BRIDGE_METRICS_ADDR: ask the running bridge's /readyz (broker "
        "subscribed, database reachable). Without it: check that the database and the broker "
        "answer. Exit status 0 when ready, 1 when not; for scripts and container health checks.",
    )
    p.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="the running bridge's metrics listener (env BRIDGE_METRICS_ADDR)",
    )

    p = commands.add(
        "api",
        _api,
        parents=[database_options()],
        summary="serve the HTTP API and the owner page",
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


async def _serve(args: argparse.Namespace) -> int:
    from bridge.runtime import serve  # noqa: PLC0415 (keeps aiomqtt out of admin commands)

    logs.configure()
    if args.workers != 1:
        from bridge.workers import supervise  # noqa: PLC0415 (as above)

        await supervise(settings(args), args.workers, api=args.api)
        return 0
    await serve(settings(args), api=args.api)
    return 0


async def _api(args: argparse.Namespace) -> int:
    from bridge.runtime import serve_api  # noqa: PLC0415 (as above)

    logs.configure()
    await serve_api(settings(args))
    return 0


async def _check(args: argparse.Namespace) -> int:
    from bridge import health  # noqa: PLC0415 (keeps prometheus_client out of other commands)

    config = settings(args)
    if config.metrics_addr:
        readiness = await health.ask(config.metrics_addr)
    else:
        readiness = await health.check_directly(config)
    print("ready" if readiness.ready else "not ready")
    for name, state in readiness.parts().items():
        print(f"{name}: {state}")
    if not readiness.ready:
        print(f"error: unavailable: {readiness.sentence()}", file=sys.stderr)
        return 1
    return 0
