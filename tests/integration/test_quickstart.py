"""The README's quick start with nothing configured: embedded PostgreSQL, mosquitto from PATH.

Two "terminals": `bridge serve --dev` in one process, the by-hand commands in others,
all finding the same database and broker through the state directory alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import mqtt
from bridge.config import MqttEndpoint
from tests.services import wait_for_port


def _env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_STATE_DIR"] = str(state_dir)
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def _stop_embedded_postgres(state_dir: Path) -> Iterator[None]:
    try:
        yield
    finally:
        pidfile = state_dir / "postgres" / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGINT)


@pytest.mark.slow
async def test_quick_start_on_embedded_defaults(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = _env(state)
    with _stop_embedded_postgres(state):
        serve = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--dev"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_port("127.0.0.1", 1883, serve, "bridge serve (embedded mosquitto)")  # type: ignore[arg-type]
            steps = [
                ("model", "add", "acme", "thermo-1", "--kind", "mac", "--window", "24h"),
                ("approve", "acme", "thermo-1", "00:1A:2B:3C:4D:5E"),
                ("claim", "acme", "thermo-1", "00-1a-2b-3c-4d-5e", "--owner", "alice"),
            ]
            for step in steps:
                done = await asyncio.to_thread(_run, env, *step)
                assert done.returncode == 0, (step, done.stderr)
            deadline = time.monotonic() + 60
            while True:  # serve may still be starting its database and subscribing
                done = await asyncio.to_thread(
                    _run,
                    env,
                    "activate",
                    "--vendor",
                    "acme",
                    "--model",
                    "thermo-1",
                    "--identifier",
                    "001A.2B3C.4D5E",
                    "--client-id",
                    "quick-1",
                    "--timeout",
                    "5",
                )
                if done.returncode != 2 or time.monotonic() > deadline:
                    break
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("ok: acme/thermo-1 001A2B3C4D5E")
            assert "(was sealed)" in done.stdout  # the reference client seals by default
            shown = await asyncio.to_thread(_run, env, "show", "acme", "thermo-1", "001a2b3c4d5e")
            assert "activated" in shown.stdout
            # The embedded broker runs the shipped ACL and dynamic-security plugin: the
            # issued key is the device's broker login, for its own topics.
            key = done.stdout.split("key: ")[1].split()[0]
            login = MqttEndpoint("127.0.0.1", 1883, False, "quick-1", key)
            async with mqtt.client(login, "quick-1", persistent=False) as device:
                await device.publish("devices/quick-1/hello", b"hi", qos=1)
            assert oct((state / "mosquitto" / "passwd").stat().st_mode)[-3:] == "600"
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                code = serve.wait(timeout=15)
            except subprocess.TimeoutExpired:
                serve.kill()
                raise
        assert code == 0, serve.stderr.read() if serve.stderr else ""
