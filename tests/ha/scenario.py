"""The failover scenario: devices activate while the primary's host is lost.

Shared by ``tests/ha/test_failover.py`` (asserts) and ``bench/failover.py`` (prints).
A bridge runs on the cluster's multi-host DSN (``target_session_attrs=read-write``).
Devices activate in a closed loop; each keeps its client id, request id and X25519 key
pair across retries, retrying on ``unavailable`` (after ``retry_after``) and on a
timeout, as the protocol asks. Mid-run the primary's Patroni and PostgreSQL are
SIGKILLed; Patroni promotes the synchronous standby; later the old primary is started
again and rejoins as a replica. At the end every key a device received is checked
against the new primary with the bridge's own keyed hash (``Admin.verify_key``).

Before the failover the same devices' time to key is measured with synchronous
replication on and off, alternating in blocks, so the cost of "0 forgotten" is
measured side by side on one machine in one run.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bridge import keys, mqtt, protocol
from bridge.admin import Admin
from bridge.config import Settings, parse_mqtt_url
from bridge.store import Store
from tests.ha.cluster import PatroniCluster, PatroniNode
from tests.helpers import start_bridge

#: Random per run: a secret written in the repository is refused by `serve` (config.py).
SECRET = "ha-suite-secret-" + secrets.token_urlsafe(32)
VENDOR, MODEL = "acme", "ha-1"
DATABASE = "bridge"
ATTEMPT_TIMEOUT = 3.0  # a device resends the same request after this long without reply
RETRY_AFTER = 1  # the bridge's retry_after for `unavailable` (BRIDGE_RETRY_AFTER_SECONDS)


def mac_of(n: int) -> str:
    return f"06{n:010X}"  # locally administered unicast: never a real vendor's


@dataclass
class Device:
    """One device's state across its attempts (what its firmware would keep)."""

    identifier: str
    client_id: str = field(default_factory=lambda: f"ha-dev-{secrets.token_hex(5)}")
    request_id: str = field(default_factory=lambda: secrets.token_hex(8))
    private: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    keys: set[str] = field(default_factory=set)
    attempts: int = 0
    unavailable: int = 0
    timeouts: int = 0
    final_code: str | None = None
    answered_at: float | None = None
    first_sent: float | None = None
    #: publish-to-reply seconds of the attempt that brought the key
    latency: float | None = None


async def activate_once(
    device: Device, endpoint: Any, prefix: str, timeout: float = ATTEMPT_TIMEOUT
) -> dict[str, Any] | None:
    """One attempt: publish the request, wait for its reply; None on a timeout."""
    public = device.private.public_key().public_bytes_raw()
    request = {
        "v": 1,
        "request_id": device.request_id,
        "vendor": VENDOR,
        "model": MODEL,
        "identifier": device.identifier,
        "public_key": base64.b64encode(public).decode(),
    }
    device.attempts += 1
    try:
        async with (
            asyncio.timeout(timeout),
            mqtt.connect(endpoint, device.client_id, persistent=False) as link,
        ):
            client = link.client
            await client.subscribe(protocol.reply_topic(prefix, device.client_id), qos=1)
            sent = time.monotonic()
            device.first_sent = device.first_sent or sent
            await client.publish(
                protocol.activate_topic(prefix, device.client_id),
                json.dumps(request).encode(),
                qos=1,
            )
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                reply: dict[str, Any] = json.loads(payload)
                if reply.get("request_id") != device.request_id:
                    continue
                if reply.get("status") == "ok":
                    device.latency = time.monotonic() - sent
                    device.keys.add(
                        keys.unseal(device.private, reply["sealed_key"], device.request_id)
                    )
                return reply
    except (TimeoutError, aiomqtt.MqttError):
        device.timeouts += 1
    return None


async def activate_until_answered(
    device: Device, endpoint: Any, prefix: str, deadline: float
) -> None:
    """Retry with the same request id until a final answer (or the deadline)."""
    while time.monotonic() < deadline:
        reply = await activate_once(device, endpoint, prefix)
        if reply is None:
            continue
        if reply.get("status") == "ok":
            device.final_code = "ok"
            device.answered_at = time.monotonic()
            return
        if reply.get("code") == "unavailable":
            device.unavailable += 1
            await asyncio.sleep(min(float(reply.get("retry_after", 1)), RETRY_AFTER))
            continue
        device.final_code = str(reply.get("code"))
        device.answered_at = time.monotonic()
        return


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Latency:
    """Time to key (publish to reply) of sequential activations, in milliseconds."""

    samples: list[float] = field(default_factory=list)

    def line(self) -> str:
        ms = [s * 1000 for s in self.samples]
        return (
            f"n={len(ms)} p50 {percentile(ms, 0.5):.1f} ms  p90 {percentile(ms, 0.9):.1f} ms  "
            f"p99 {percentile(ms, 0.99):.1f} ms  mean {sum(ms) / max(1, len(ms)):.1f} ms"
        )


@dataclass
class FailoverReport:
    nodes: int
    strict: bool
    devices_started: int = 0
    answered_ok: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # final codes other than ok
    unanswered: int = 0  # devices still without a final answer at the deadline
    keys_received: int = 0  # distinct keys devices hold
    keys_issued: int = 0  # devices the new primary records as activated
    issued_not_received: int = 0
    forgotten: int = 0  # keys a device received that the new primary does not verify
    forgotten_on_rejoined: int = 0  # the same check on the old primary, rejoined
    duplicates: int = 0  # devices with two keys, plus keys held by two devices
    unavailable_replies: int = 0
    attempt_timeouts: int = 0
    failover_seconds: float = float("nan")  # SIGKILL -> Patroni shows a new leader
    gap_seconds: float = float("nan")  # longest time without any key delivered, spanning the kill
    first_key_after_kill: float = float("nan")
    keys_after_promotion: float = float("nan")  # leader seen -> first key delivered again
    rejoin_seconds: float = float("nan")  # old primary started -> streaming again
    old_primary_role: str = ""
    new_primary: str = ""
    latency_sync: Latency = field(default_factory=Latency)
    latency_async: Latency = field(default_factory=Latency)
    #: one-row INSERT transactions, synchronous_commit = on / local, alternating
    commit_sync: Latency = field(default_factory=Latency)
    commit_async: Latency = field(default_factory=Latency)
    timeline: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        mode = "synchronous_mode + synchronous_mode_strict" if self.strict else "synchronous_mode"
        return [
            f"cluster                  {self.nodes} PostgreSQL 15 nodes (Patroni, etcd), {mode}",
            f"devices started          {self.devices_started}",
            f"devices answered ok      {self.answered_ok}",
            f"devices refused          {self.refused or 'none'}",
            f"devices unanswered       {self.unanswered}",
            f"keys received            {self.keys_received}",
            f"keys issued (new primary) {self.keys_issued}",
            f"issued, not received     {self.issued_not_received}",
            f"FORGOTTEN keys           {self.forgotten}  (received, unknown to the new primary)",
            f"forgotten on old primary {self.forgotten_on_rejoined}  (after it rejoined)",
            f"DUPLICATE keys           {self.duplicates}",
            f"unavailable replies      {self.unavailable_replies}",
            f"attempt timeouts         {self.attempt_timeouts}",
            f"failover (kill->leader)  {self.failover_seconds:.1f} s",
            f"time without keys        {self.gap_seconds:.1f} s  (longest gap spanning the kill)",
            f"keys flowing again       {self.first_key_after_kill:.1f} s after the kill, "
            f"{self.keys_after_promotion:.1f} s after the promotion was seen",
            f"old primary rejoined     {self.rejoin_seconds:.1f} s after restart, as "
            f"{self.old_primary_role}",
            f"new primary              {self.new_primary}",
            f"time to key, sync on     {self.latency_sync.line()}",
            f"time to key, sync off    {self.latency_async.line()}",
            f"commit, to a standby     {self.commit_sync.line()}",
            f"commit, local only       {self.commit_async.line()}",
            f"wall time                {self.seconds:.1f} s",
        ]


async def _prepare_database(cluster: PatroniCluster, devices: int) -> None:
    conn = await asyncpg.connect(cluster.dsn("postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    async with Store.open(cluster.dsn(DATABASE), pool_size=1) as store:
        await store.migrate()
    settings = Settings(
        database_url=cluster.dsn(DATABASE), secret=SECRET, state_dir=Path("/nonexistent")
    )
    async with Admin.connect(settings, actor="ha") as admin:
        await admin.add_model(VENDOR, MODEL, kind="mac", claim_required=False)
        await admin.approve(VENDOR, MODEL, [mac_of(n) for n in range(devices)])


async def _wait_replayed(standby_dsn: str, primary_dsn: str, timeout: float) -> None:
    """Until the standby has replayed everything the primary had written when asked."""
    primary = await asyncpg.connect(primary_dsn)
    standby = await asyncpg.connect(standby_dsn)
    try:
        target = await primary.fetchval("SELECT pg_current_wal_lsn()")
        async with asyncio.timeout(timeout):
            while True:
                behind = await standby.fetchval(
                    "SELECT pg_wal_lsn_diff($1, pg_last_wal_replay_lsn()) > 0", target
                )
                if not behind:
                    return
                await asyncio.sleep(0.1)
    finally:
        await primary.close()
        await standby.close()


async def _verify(dsn: str, devices: list[Device]) -> tuple[int, int]:
    """(keys the server at ``dsn`` does not verify, devices it records as activated)."""
    settings = Settings(database_url=dsn, secret=SECRET, state_dir=Path("/nonexistent"))
    forgotten = 0
    async with Admin.connect(settings, actor="ha-verify") as admin:
        for device in devices:
            for key in device.keys:
                if not await admin.verify_key(VENDOR, MODEL, device.identifier, key):
                    forgotten += 1
    conn = await asyncpg.connect(dsn)
    try:
        issued: int = await conn.fetchval("SELECT count(*) FROM devices WHERE state = 'activated'")
    finally:
        await conn.close()
    return forgotten, issued


async def run_failover(
    cluster: PatroniCluster,
    mqtt_url: str,
    *,
    workers: int = 8,
    latency_rounds: int = 2,
    latency_per_round: int = 25,
    before_kill: float = 4.0,
    after_failover: float = 4.0,
    after_rejoin: float = 3.0,
    log: Callable[[str], None] = lambda _: None,
) -> FailoverReport:
    """Run the scenario on a started cluster; the caller asserts on (or prints) the report."""
    started = time.monotonic()
    report = FailoverReport(nodes=len(cluster.nodes), strict=cluster.strict)

    def note(what: str) -> None:
        line = f"t={time.monotonic() - started:6.1f}s {what}"
        report.timeline.append(line)
        log(line)

    pool_size = latency_rounds * latency_per_round * 2 + 12_000
    await _prepare_database(cluster, pool_size)
    prefix = f"ha-{secrets.token_hex(4)}/provision"
    settings = Settings(
        database_url=cluster.dsn(DATABASE),
        mqtt_url=mqtt_url,
        topic_prefix=prefix,
        secret=SECRET,
        client_id=f"bridge-ha-{secrets.token_hex(4)}",
        retry_after_seconds=RETRY_AFTER,
        state_dir=Path("/nonexistent-state-dir-ha"),
    )
    endpoint = parse_mqtt_url(mqtt_url)
    numbers = iter(range(pool_size))
    fleet: list[Device] = []

    def new_device() -> Device:
        device = Device(mac_of(next(numbers)))
        fleet.append(device)
        return device

    bridge = await start_bridge(settings)
    try:
        note(
            f"bridge up on {settings.database_url.get_secret_value().split('@')[1]}"
            if settings.database_url
            else "bridge up"
        )
        # -- the cost of synchronous replication, side by side ------------------------
        probe = await asyncpg.connect(cluster.dsn(DATABASE))
        try:
            await probe.execute("CREATE TABLE ha_probe (at timestamptz DEFAULT now())")
            for _round in range(latency_rounds):
                for sync in (True, False):
                    await asyncio.to_thread(cluster.set_synchronous, sync)
                    target = report.latency_sync if sync else report.latency_async
                    for _ in range(latency_per_round):
                        device = new_device()
                        await activate_until_answered(
                            device, endpoint, prefix, time.monotonic() + 30
                        )
                        if device.latency is not None:
                            target.samples.append(device.latency)
                    names = await probe.fetchval("SHOW synchronous_standby_names")
                    if bool(names) != sync:
                        raise RuntimeError(f"synchronous_standby_names is {names!r}")
                    if not sync:
                        continue
                    # The replication wait alone, without MQTT and the bridge: the same
                    # transaction, alternately waiting for the standby and not, sample
                    # by sample, so that both see the same machine.
                    for n in range(2 * latency_per_round):
                        mode = "on" if n % 2 == 0 else "local"
                        began = time.perf_counter()
                        async with probe.transaction():
                            await probe.execute(f"SET LOCAL synchronous_commit = {mode}")
                            await probe.execute("INSERT INTO ha_probe DEFAULT VALUES")
                        commits = report.commit_sync if mode == "on" else report.commit_async
                        commits.samples.append(time.perf_counter() - began)
        finally:
            await probe.close()
        await asyncio.to_thread(cluster.set_synchronous, True)
        note("latency measured; synchronous replication on")

        # -- the failover -------------------------------------------------------------
        stop = asyncio.Event()
        key_times: list[float] = []
        promoted_at = float("inf")
        flowing = asyncio.Event()  # a key delivered after the promotion was seen

        async def worker() -> None:
            while not stop.is_set():
                device = new_device()
                await activate_until_answered(device, endpoint, prefix, time.monotonic() + 90)
                if device.final_code == "ok" and device.answered_at is not None:
                    key_times.append(device.answered_at)
                    if device.answered_at > promoted_at:
                        flowing.set()

        tasks = [asyncio.create_task(worker(), name=f"ha-worker-{n}") for n in range(workers)]
        await asyncio.sleep(before_kill)
        victim = await asyncio.to_thread(cluster.wait_primary, 30.0)
        killed_at = time.monotonic()
        await asyncio.to_thread(victim.crash)
        note(f"SIGKILL {victim.name} (Patroni and PostgreSQL)")
        successor: PatroniNode = await asyncio.to_thread(
            lambda: cluster.wait_primary(90.0, not_=victim)
        )
        promoted_at = time.monotonic()
        report.failover_seconds = promoted_at - killed_at
        report.new_primary = successor.name
        note(f"{successor.name} is the leader")
        waiting = asyncio.create_task(flowing.wait(), name="ha-keys-flowing")
        await asyncio.wait({waiting, bridge.task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if bridge.task.done():
            raise RuntimeError("the bridge stopped during the failover") from (
                bridge.task.exception() if not bridge.task.cancelled() else None
            )
        if not flowing.is_set():
            raise TimeoutError("no key was delivered within 60 s of the promotion")
        report.keys_after_promotion = time.monotonic() - promoted_at
        note("keys delivered again")
        await asyncio.sleep(after_failover)
        restarted_at = time.monotonic()
        await asyncio.to_thread(victim.start)
        note(f"{victim.name} started again")
        await asyncio.to_thread(cluster.wait_member_streaming, victim, 90.0)
        report.rejoin_seconds = time.monotonic() - restarted_at
        report.old_primary_role = cluster.role_of(victim)
        note(f"{victim.name} rejoined as {report.old_primary_role}")
        await asyncio.sleep(after_rejoin)
        stop.set()
        # Devices already started finish their retries (each has its own deadline).
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        note("devices done")
    finally:
        await bridge.halt()

    # Keys still in flight at the kill are delivered just after it; the outage is the
    # longest stretch after the kill with no key delivered at all.
    times = sorted(key_times)
    gaps = [(b - a, b) for a, b in itertools.pairwise(times) if b > killed_at]
    if gaps:
        report.gap_seconds, resumed = max(gaps)
        report.first_key_after_kill = resumed - killed_at

    report.devices_started = len(fleet)
    received: dict[str, int] = {}
    for device in fleet:
        report.unavailable_replies += device.unavailable
        report.attempt_timeouts += device.timeouts
        if device.final_code == "ok":
            report.answered_ok += 1
        elif device.final_code is None:
            report.unanswered += 1
        else:
            report.refused[device.final_code] = report.refused.get(device.final_code, 0) + 1
        if len(device.keys) > 1:
            report.duplicates += 1
        for key in device.keys:
            received[key] = received.get(key, 0) + 1
    report.duplicates += sum(1 for n in received.values() if n > 1)
    report.keys_received = len(received)

    new_primary_dsn = cluster.node_dsn(successor, DATABASE)
    report.forgotten, report.keys_issued = await _verify(new_primary_dsn, fleet)
    report.issued_not_received = report.keys_issued - sum(1 for d in fleet if d.keys)
    # The old primary, now a replica, must hold the same keys (read on the standby).
    await _wait_replayed(cluster.node_dsn(victim, DATABASE), new_primary_dsn, 30.0)
    report.forgotten_on_rejoined, _ = await _verify(cluster.node_dsn(victim, DATABASE), fleet)
    report.seconds = time.monotonic() - started
    note("verified")
    return report


async def run_without_standby(
    cluster: PatroniCluster, mqtt_url: str, *, log: Callable[[str], None] = lambda _: None
) -> list[str]:
    """Every standby lost at once: what a device is answered, and where its key lives.

    Run after :func:`run_failover` on the same cluster. Returns lines for the report.
    """
    started = time.monotonic()
    lines: list[str] = []

    def note(what: str) -> None:
        line = f"t={time.monotonic() - started:6.1f}s {what}"
        lines.append(line)
        log(line)

    identifier = mac_of(0xFFFFF0)
    settings = Settings(
        database_url=cluster.dsn(DATABASE),
        mqtt_url=mqtt_url,
        topic_prefix=f"ha-{secrets.token_hex(4)}/provision",
        secret=SECRET,
        client_id=f"bridge-ha-{secrets.token_hex(4)}",
        retry_after_seconds=RETRY_AFTER,
        state_dir=Path("/nonexistent-state-dir-ha"),
    )
    async with Admin.connect(settings, actor="ha") as admin:
        await admin.approve(VENDOR, MODEL, [identifier])
    primary = await asyncio.to_thread(cluster.wait_primary, 30.0)
    standbys = [n for n in cluster.nodes if n is not primary]
    endpoint = parse_mqtt_url(mqtt_url)
    bridge = await start_bridge(settings)
    try:
        for node in standbys:
            await asyncio.to_thread(node.crash)
        note(f"SIGKILL every standby ({', '.join(n.name for n in standbys)})")
        device = Device(identifier)
        began = time.monotonic()
        reply = await activate_once(device, endpoint, settings.topic_prefix, timeout=40.0)
        code = "no reply" if reply is None else reply.get("code", reply.get("status"))
        note(f"first attempt answered {code!r} after {time.monotonic() - began:.1f} s")
        conn = await asyncpg.connect(cluster.node_dsn(primary, DATABASE))
        try:
            state = await conn.fetchval(
                "SELECT state FROM devices WHERE identifier = $1", identifier
            )
        finally:
            await conn.close()
        note(f"on the primary the device is now {state!r}")
        began = time.monotonic()
        reply = await activate_once(device, endpoint, settings.topic_prefix, timeout=40.0)
        code = "no reply" if reply is None else reply.get("code", reply.get("status"))
        note(
            f"the retry (same request id) answered {code!r} after {time.monotonic() - began:.1f} s"
        )
        for node in standbys:
            await asyncio.to_thread(node.start)
        await asyncio.to_thread(cluster.wait_members, len(cluster.nodes), 90.0, sync=True)
        note("standbys back; one is the synchronous standby again")
        began = time.monotonic()
        reply = await activate_once(device, endpoint, settings.topic_prefix, timeout=40.0)
        code = "no reply" if reply is None else reply.get("code", reply.get("status"))
        note(f"the next retry answered {code!r} after {time.monotonic() - began:.1f} s")
    finally:
        await bridge.halt()
    for node in standbys:
        await _wait_replayed(
            cluster.node_dsn(node, DATABASE), cluster.node_dsn(primary, DATABASE), 30.0
        )
        forgotten, _ = await _verify(cluster.node_dsn(node, DATABASE), [device])
        note(
            f"{node.name}: of the device's {len(device.keys)} key(s), "
            f"{forgotten} unknown to this standby"
        )
    return lines
