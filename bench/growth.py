"""Database growth under anonymous failures: rows added by a flood (issue 12).

Sends requests straight to the bridge's provisioner (bridge.provisioner.Provisioner on
bridge.store.Store, the code `bridge serve` runs for each message) against a throwaway
PostgreSQL: no broker, which only adds transport. Each scenario runs on a fresh,
migrated database with one registered model, then prints the rows added to every
table, the rows left after housekeeping once the throttle window has closed, and the
requests per second. Scenarios:

- ``malformed``: requests that are not JSON (answered ``malformed``);
- ``guesses``: well-formed requests for numbers that are not approved (answered
  ``not_approved``, then ``rate_limited``).

    python bench/growth.py                              # 100,000 of each from 10,000 client ids
    python bench/growth.py --requests 20000 --clients 2000 --scenario malformed

``BRIDGE_DATABASE_URL`` (a superuser URL) points it at a server of your own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import services

from bridge import keys
from bridge.provisioner import Provisioner
from bridge.records import RateLimit
from bridge.store import Store

SECRET = b"bench-growth-" + b"x" * 32


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _table_rows(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r["relname"]
            for r in await conn.fetch(
                "SELECT relname FROM pg_stat_user_tables WHERE schemaname = 'public' "
                "ORDER BY relname"
            )
        ]
        return {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
    finally:
        await conn.close()


def _payload(scenario: str, client: int, n: int) -> bytes:
    if scenario == "malformed":
        return b"not json " + str(n).encode()
    body = {
        "v": 1,
        "request_id": f"g{n}",
        "vendor": "acme",
        "model": "thermo-1",
        # A fresh, well-formed MAC address per request: never the same number twice.
        "identifier": f"02{client:06X}{n % 65536:04X}",
    }
    return json.dumps(body).encode()


async def run(admin_url: str, scenario: str, requests: int, clients: int, window: int) -> None:
    name = f"bench_growth_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = _with_database(admin_url, name)
    try:
        async with Store.open(dsn, pool_size=10) as store:
            await store.migrate()
            await store.add_model(
                vendor="acme",
                model="thermo-1",
                kind="mac",
                pattern=None,
                window_seconds=86400,
                claim_required=True,
                actor="bench",
                # Guesses carry no public key: plaintext delivery keeps them guesses,
                # not seal_required refusals (which are not counted as failures).
                plaintext_keys=True,
            )
            before = await _table_rows(dsn)
            provisioner = Provisioner(
                store,
                keys.KeyHasher(SECRET),
                keys.ReplayCipher(SECRET),
                limit=RateLimit(window_seconds=window),
            )
            per_client = requests // clients
            codes: dict[str, int] = {}
            queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
            # Round robin over client ids, as a flood from many connections arrives.
            for n in range(per_client):
                for c in range(clients):
                    queue.put_nowait((c, n))

            async def worker() -> None:
                while not queue.empty():
                    c, n = queue.get_nowait()
                    reply = await provisioner.activate(f"flood-{c}", _payload(scenario, c, n))
                    codes[reply.code] = codes.get(reply.code, 0) + 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(32)))
            elapsed = time.perf_counter() - started
            after = await _table_rows(dsn)
            await asyncio.sleep(window + 1)  # the throttle window closes
            await store.purge_replies()
            await store.purge_attempts(window)
            housekept = await _table_rows(dsn)
    finally:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
    sent = per_client * clients
    added = {t: after[t] - before[t] for t in after if after[t] != before[t]}
    kept = {t: housekept[t] - before[t] for t in housekept if housekept[t] != before[t]}
    print(
        f"{scenario}: {sent:,} requests from {clients:,} client ids in {elapsed:.1f} s "
        f"({sent / elapsed:,.0f}/s); answers {dict(sorted(codes.items()))}"
    )
    print(f"  rows added, all tables: {sum(added.values()):,} {added}")
    print(f"  rows left after housekeeping: {sum(kept.values()):,} {kept}")


async def _main(args: argparse.Namespace) -> None:
    with services.postgres() as (admin_url, _):
        for scenario in args.scenario or ["malformed", "guesses"]:
            await run(admin_url, scenario, args.requests, args.clients, args.window)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument(
        "--window", type=int, default=5, help="throttle window, seconds (short: the bench waits it)"
    )
    parser.add_argument(
        "--scenario", action="append", choices=["malformed", "guesses"], help="default: both"
    )
    asyncio.run(_main(parser.parse_args()))
