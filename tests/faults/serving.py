"""`bridge serve` as a real child process, for the attacks of issue 12 that need one.

Either on a configured broker (``BRIDGE_MQTT_URL``) or on its embedded defaults: then
``serve`` starts mosquitto itself with the shipped mosquitto.conf, mosquitto.acl and the
dynamic-security plugin, exactly as ``bridge serve --dev`` on a fresh clone does, only
on a free port instead of 1883 (so the test never competes with a quick-start test for
it): the one line of Python in ``_SERVE`` moves the embedded address, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bridge import health

REPO = Path(__file__).resolve().parents[2]

_SERVE = (
    "import sys\n"
    "import bridge.embedded as embedded\n"
    "embedded.EMBEDDED_MQTT_URL = sys.argv[1]\n"
    "from bridge.cli import main\n"
    "raise SystemExit(main(['serve', *sys.argv[2:]]))\n"
)


class Serve:
    """One ``bridge serve`` process logging JSON lines to a file."""

    def __init__(
        self,
        log_path: Path,
        env: dict[str, str],
        *,
        embedded_url: str | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.log_path = log_path
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
            "PYTHONPATH": str(REPO),
            **env,
        }
        self._embedded_url = embedded_url
        self._args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> None:
        if self._embedded_url is not None:
            argv = [sys.executable, "-c", _SERVE, self._embedded_url, *self._args]
        else:
            argv = [sys.executable, "-m", "bridge", "serve", *self._args]
        with self.log_path.open("ab") as log:
            self._offset = log.tell()
            self.proc = subprocess.Popen(argv, env=self._env, stdout=log, stderr=log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        """Logged events called ``name`` since the last start."""
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            lines = f.read().decode(errors="replace").splitlines()
        found = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    found.append(event)
        return found

    async def wait_event(self, name: str, timeout: float = 30.0, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while len(found := self.events(name)) < count:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"bridge serve exited with {self.proc.returncode} before {name!r}:\n"
                    + self.text()[-3000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name!r} within {timeout} s:\n" + self.text()[-3000:])
            await asyncio.sleep(0.05)
        return found[count - 1]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None when still running after ``timeout``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def terminate(self, timeout: float = 20.0) -> tuple[int | None, float]:
        """SIGTERM; (exit status or None if it did not exit in time, seconds taken).

        A bridge that did not exit is SIGKILLed, so no test leaves one behind.
        """
        assert self.proc is not None
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await self.wait_exit(timeout)
        took = time.monotonic() - started
        if code is None:
            self.kill()
        return code, took

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_BROKER_PID = re.compile(r"started embedded mosquitto on \S+ \(pid (\d+)\)")


def embedded_broker_pid(serve: Serve) -> int:
    for event in serve.events("broker"):
        found = _BROKER_PID.search(str(event.get("msg", "")))
        if found:
            return int(found.group(1))
    raise AssertionError("serve did not start its embedded mosquitto:\n" + serve.text()[-3000:])


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


async def readiness(addr: str) -> tuple[int, dict[str, Any]]:
    status, body = await health.fetch(addr, "/readyz", timeout=3.0)
    answer: dict[str, Any] = json.loads(body)
    return status, answer
