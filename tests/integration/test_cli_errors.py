"""The command line's refusals: one line on stderr, never a traceback (real processes)."""

from __future__ import annotations

from bridge.config import Settings
from tests.integration.test_cli import _env, bridge_cli
from tests.services import free_port

DEVICE = ("--vendor", "acme", "--model", "thermo-1", "--identifier", "00:1a:2b:3c:4d:5e")


async def test_attack_activate_without_a_broker_is_one_error_line_hiding_the_password(
    settings: Settings,
) -> None:
    url = f"mqtt://device:hunter2-not-shown@127.0.0.1:{free_port()}"
    run = await bridge_cli(_env(settings, BRIDGE_MQTT_URL=url), "activate", *DEVICE)
    assert run.returncode == 1
    assert run.stderr.startswith("error: unavailable: The broker at 127.0.0.1:"), run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "hunter2" not in run.stderr
