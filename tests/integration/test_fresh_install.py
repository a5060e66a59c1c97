"""The README's first quick-start command on a machine with only Python 3.11.

A new virtual environment, the project installed into it with pip from this
checkout, `mosquitto` nowhere on PATH: `bridge serve --dev` must start the
in-process amqtt broker on 127.0.0.1:1883 (and say so in its first log line) and
the by-hand commands must work against it. Binds 127.0.0.1:1883, like
test_quickstart.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import venv
from pathlib import Path

import pytest

from tests.integration.test_quickstart import _stop_embedded_postgres

ROOT = Path(__file__).resolve().parents[2]


def _path_without_mosquitto(venv_bin: Path) -> str:
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    kept = [d for d in dirs if not (Path(d) / "mosquitto").exists()]
    path = os.pathsep.join([str(venv_bin), *kept])
    assert shutil.which("mosquitto", path=path) is None
    return path


def _port_in_use(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(bridge: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bridge), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def _first_lines(log: Path, serve: subprocess.Popen[bytes], until: str) -> list[str]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        lines = (await asyncio.to_thread(log.read_text)).splitlines()
        if any(until in line for line in lines):
            return lines
        assert serve.poll() is None, "bridge serve exited:\n" + "\n".join(lines)
        await asyncio.sleep(0.2)
    text = await asyncio.to_thread(log.read_text)
    raise AssertionError(f"no {until!r} in the log within 90 s:\n{text}")


@pytest.mark.slow
async def test_fresh_venv_without_mosquitto(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    await asyncio.to_thread(venv.create, env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    install = await asyncio.to_thread(
        subprocess.run,
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    bridge = bin_dir / "bridge"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "VIRTUAL_ENV"))}
    env["PATH"] = _path_without_mosquitto(bin_dir)
    state = tmp_path / "state"
    env["BRIDGE_STATE_DIR"] = str(state)
    env.pop("PYTHONPATH", None)  # nothing from this checkout: only what pip installed

    deadline = time.monotonic() + 60
    while _port_in_use(1883):  # another quick-start test may still be releasing it
        assert time.monotonic() < deadline, "127.0.0.1:1883 is taken by another broker"
        await asyncio.sleep(0.5)

    log = tmp_path / "serve.log"
    with _stop_embedded_postgres(state), log.open("wb") as sink:
        serve = subprocess.Popen(
            [str(bridge), "serve", "--dev"], env=env, stdout=subprocess.DEVNULL, stderr=sink
        )
        try:
            lines = await _first_lines(log, serve, '"event": "subscribed"')
            # Log lines are JSON (stderr is a file); Python warnings from libraries
            # (platformdirs without XDG_RUNTIME_DIR) are not log lines.
            records = [json.loads(line) for line in lines if line.startswith("{")]
            first = records[0]
            assert "embedded MQTT broker (amqtt" in first["msg"], lines
            assert first["broker"] == "amqtt"
            steps = [
                ("model", "add", "acme", "thermo-1", "--kind", "mac", "--window", "24h"),
                ("approve", "acme", "thermo-1", "00:1A:2B:3C:4D:5E"),
                ("claim", "acme", "thermo-1", "00-1a-2b-3c-4d-5e", "--owner", "alice"),
                ("activate", "--vendor", "acme", "--model", "thermo-1"),
            ]
            for step in steps[:3]:
                done = await asyncio.to_thread(_run, bridge, env, *step)
                assert done.returncode == 0, (step, done.stderr)
            done = await asyncio.to_thread(
                _run, bridge, env, *steps[3], "--identifier", "001A.2B3C.4D5E"
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("ok: acme/thermo-1 001A2B3C4D5E")
            again = await asyncio.to_thread(
                _run, bridge, env, *steps[3], "--identifier", "00:1a:2b:3c:4d:5e"
            )
            assert again.returncode == 1
            assert again.stderr.startswith("error: already_activated:")
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                code = serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                serve.kill()
                raise
    assert code == 0, log.read_text()
