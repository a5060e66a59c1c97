"""The chaos scenario: replicas on one shared subscription, a fleet, and faults on a timetable.

Shared by ``tests/faults/test_chaos.py`` (a few hundred devices) and ``bench/chaos.py``
(thousands). Every fault is real: mosquitto is stopped and started, PostgreSQL is
stopped (cleanly, then as a crash) and started, one bridge is SIGKILLed and started
again with the same client id. At the end the devices' keys are compared with the
database through the keyed hash.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bridge.admin import Admin
from bridge.config import Settings
from bridge.keys import KeyHasher
from tests.faults.cluster import (
    TEST_SECRET,
    BridgeProcess,
    Broker,
    Device,
    FleetConfig,
    Postgres,
    new_database,
    percentile,
    run_device,
)

VENDOR, MODEL = "acme", "chaos-1"


@dataclass
class ChaosReport:
    devices: int
    requests_sent: int = 0
    answered: int = 0
    lost: int = 0  # devices never answered
    duplicated_keys: int = 0  # devices that saw more than one distinct key
    wrong_outcome: int = 0  # devices answered with anything but ok
    db_mismatch: int = 0  # devices whose key the database does not verify
    fresh_keys_issued: int = 0  # audited non-replayed 'ok' decisions
    half_written: int = 0  # activated without its stored reply, or a reply without a key
    replays: int = 0  # audited 'ok' answers that resent a stored reply
    unavailable_replies: int = 0  # 'unavailable' answers devices saw (database down)
    p50: float = float("nan")
    p99: float = float("nan")
    broker_restarts: int = 0
    db_restarts: int = 0
    bridge_kills: int = 0
    bridge_reconnects: int = 0
    bridges_alive_at_end: int = 0
    bridge_exit_codes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    timeline: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"devices               {self.devices}",
            f"requests sent         {self.requests_sent}",
            f"answered              {self.answered}",
            f"lost                  {self.lost}",
            f"duplicated keys       {self.duplicated_keys}",
            f"wrong outcome         {self.wrong_outcome}",
            f"db disagrees          {self.db_mismatch}",
            f"fresh keys issued     {self.fresh_keys_issued}",
            f"half-written rows     {self.half_written}",
            f"replayed replies      {self.replays}",
            f"unavailable replies   {self.unavailable_replies}",
            f"time to key p50       {self.p50:.2f} s",
            f"time to key p99       {self.p99:.2f} s",
            f"broker restarts       {self.broker_restarts}",
            f"postgres restarts     {self.db_restarts}",
            f"bridge SIGKILLs       {self.bridge_kills}",
            f"bridge reconnects     {self.bridge_reconnects}",
            f"bridges alive at end  {self.bridges_alive_at_end}",
            f"bridge exit codes     {self.bridge_exit_codes}",
            f"wall time             {self.seconds:.1f} s",
        ]


def mac_of(n: int) -> str:
    return f"02{n:010X}"  # locally administered unicast: never a real vendor's


async def run_chaos(
    pg: Postgres,
    *,
    devices: int,
    spread_seconds: float,
    bridges: int = 3,
    broker_restarts: int = 2,
    db_restarts: int = 2,
    bridge_kills: int = 3,
    settle_timeout: float = 120.0,
    retry_seconds: float = 3.0,
    log: Callable[[str], None] = lambda _: None,
) -> ChaosReport:
    """Run the whole scenario and measure it; the caller asserts on the report."""
    report = ChaosReport(devices=devices)
    started = time.monotonic()
    url = await new_database(pg, f"chaos_{secrets.token_hex(4)}")
    prefix = f"chaos-{secrets.token_hex(4)}/provision"
    settings = Settings(database_url=url, secret=TEST_SECRET, state_dir=Path("/nonexistent"))
    async with Admin.connect(settings, actor="chaos") as admin:
        await admin.add_model(VENDOR, MODEL, kind="mac", claim_required=False, plaintext_keys=True)
        for first in range(0, devices, 5000):
            batch = range(first, min(devices, first + 5000))
            await admin.approve(VENDOR, MODEL, [mac_of(n) for n in batch])

    broker = Broker()
    broker.start()
    workdir = Path(tempfile.mkdtemp(prefix="bf-bridges-"))
    replicas = [
        BridgeProcess(
            client_id=f"bridge-{n}",
            database_url=url,
            mqtt_url=broker.url,
            prefix=prefix,
            share_group="provisioners",
            workdir=workdir,
        )
        for n in range(bridges)
    ]
    stop_devices = asyncio.Event()
    fleet = [
        Device(f"dev-{n:05d}", mac_of(n), f"req-{secrets.token_hex(6)}") for n in range(devices)
    ]
    cfg = FleetConfig(broker.url, prefix, VENDOR, MODEL, retry_seconds=retry_seconds)
    tasks: list[asyncio.Task[None]] = []
    try:
        for replica in replicas:
            replica.start()
        await asyncio.gather(*(r.wait_subscribed() for r in replicas))
        victim = replicas[0]

        def note(what: str) -> None:
            line = f"t={time.monotonic() - started:6.1f}s {what}"
            report.timeline.append(line)
            log(line)

        async def kill_victim() -> None:
            victim.kill()
            note(f"SIGKILL {victim.client_id}")
            await asyncio.sleep(0.5)
            victim.start()
            await victim.wait_subscribed(timeout=60)
            note(f"{victim.client_id} back")

        async def restart_broker() -> None:
            note("broker stopping")
            await broker.restart(down_seconds=1.0)
            note("broker back")

        async def restart_db(mode: str) -> None:
            note(f"postgres stopping ({mode})")
            await asyncio.to_thread(pg.stop, mode)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(pg.start)
            note("postgres back")

        # Interleave the kinds so each kind of fault meets a different wave of devices.
        modes = ["fast", "immediate"] * db_restarts
        pending_faults: list[list[Callable[[], Awaitable[None]]]] = [
            [kill_victim] * bridge_kills,
            [restart_broker] * broker_restarts,
            [functools.partial(restart_db, modes[n]) for n in range(db_restarts)],
        ]
        faults: list[Callable[[], Awaitable[None]]] = []
        while any(pending_faults):
            for kind in pending_faults:
                if kind:
                    faults.append(kind.pop(0))

        async def start_fleet() -> None:
            gap = spread_seconds / max(1, devices)
            for device in fleet:
                tasks.append(
                    asyncio.create_task(
                        run_device(device, cfg, stop_devices), name=device.client_id
                    )
                )
                await asyncio.sleep(gap)

        starter = asyncio.create_task(start_fleet(), name="fleet-starter")
        gap = spread_seconds / (len(faults) + 1)
        for fault in faults:
            await asyncio.sleep(gap)
            await fault()
        await starter
        note("all devices started; waiting for answers")
        _, pending = await asyncio.wait(tasks, timeout=settle_timeout)
        note(f"settled ({len(pending)} devices still waiting)")
    finally:
        stop_devices.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        report.bridges_alive_at_end = sum(r.alive() for r in replicas)
        report.bridge_reconnects = sum(len(r.events("reconnect")) for r in replicas)
        report.bridge_exit_codes = [await asyncio.to_thread(r.terminate) for r in replicas]
        broker.close()
        shutil.rmtree(workdir, ignore_errors=True)

    report.broker_restarts = broker.restarts
    report.db_restarts = db_restarts
    report.bridge_kills = replicas[0].kills
    await _measure(report, fleet, url)
    report.seconds = time.monotonic() - started
    return report


async def _measure(report: ChaosReport, fleet: list[Device], url: str) -> None:
    hasher = KeyHasher(TEST_SECRET.encode())
    report.requests_sent = sum(d.sent for d in fleet)
    report.answered = sum(d.answered for d in fleet)
    report.lost = report.devices - report.answered
    report.duplicated_keys = sum(len(d.keys) > 1 for d in fleet)
    report.wrong_outcome = sum(d.answered and not d.keys for d in fleet)
    report.unavailable_replies = sum(d.codes.count("unavailable") for d in fleet)
    times = [d.answered_after for d in fleet if d.answered_after is not None]
    report.p50, report.p99 = percentile(times, 0.50), percentile(times, 0.99)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT identifier, state, key_hash FROM devices")
        report.fresh_keys_issued = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'activate' AND code = 'ok' "
            "AND detail IS NULL"
        )
        # The decision is one transaction: a key hash and its stored reply exist together.
        report.half_written = await conn.fetchval(
            """SELECT count(*) FROM devices d
                WHERE (d.state = 'activated')
                      <> (SELECT count(*) = 1 FROM replies r WHERE r.device_id = d.id)"""
        )
        report.replays = await conn.fetchval(  # tallied per client id (schemas/008)
            "SELECT coalesce(sum(1 + repeats), 0) FROM audit_log "
            "WHERE action = 'activate' AND code = 'ok' AND detail IS NOT NULL"
        )
    finally:
        await conn.close()
    stored = {r["identifier"]: r for r in rows}
    for device in fleet:
        row = stored.get(device.identifier)
        held = next(iter(device.keys)) if len(device.keys) == 1 else None
        if (
            row is None
            or held is None
            or row["state"] != "activated"
            or row["key_hash"] is None
            or not hasher.verify(held, row["key_hash"])
        ):
            report.db_mismatch += 1
