"""Metrics, health and readiness of a real bridge, scraped over its own HTTP listener."""

from __future__ import annotations

import json
import secrets

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bridge import health
from bridge.admin import Admin
from bridge.config import Settings
from bridge.metrics import Metrics
from tests.helpers import activate, raw_exchange, start_bridge
from tests.integration.test_cli import _env, bridge_cli
from tests.services import free_port

MAC = "00:1A:2B:3C:4D:5E"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def _scrape(addr: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = await health.fetch(addr, "/metrics")
    assert status == 200
    return _samples(body.decode())


def _with_metrics(settings: Settings) -> Settings:
    return settings.model_copy(update={"metrics_addr": f"127.0.0.1:{free_port()}"})


async def test_scrape_counts_activations_by_outcome(settings: Settings, admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC, "00:1A:2B:3C:4D:5F"])
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    settings = _with_metrics(settings)
    assert settings.metrics_addr is not None
    metrics = Metrics()
    running = await start_bridge(settings, metrics=metrics)
    try:
        assert (await activate(settings, MAC)).ok
        for _ in range(2):
            assert (await activate(settings, MAC)).reply["code"] == "already_activated"
        assert (await activate(settings, "00:1A:2B:3C:4D:5F")).reply["code"] == "not_claimed"
        assert (await activate(settings, "02:00:00:00:00:01")).reply["code"] == "not_approved"
        assert (await raw_exchange(settings, b"not json"))["code"] == "malformed"
        scraped = await _scrape(settings.metrics_addr)
    finally:
        await running.halt()

    def count(outcome: str) -> float:
        return scraped.get(("bridge_activations_total", (("outcome", outcome),)), 0.0)

    assert count("ok") == 1
    assert count("already_activated") == 2
    assert count("not_claimed") == 1
    assert count("not_approved") == 1
    assert count("malformed") == 1
    assert count("rate_limited") == 0
    assert scraped[("bridge_reply_seconds_count", ())] == 6
    assert scraped[("bridge_reply_seconds_bucket", (("le", "+Inf"),))] == 6
    assert 0 < scraped[("bridge_reply_seconds_sum", ())] < 6 * 10
    assert scraped[("bridge_requests_in_flight", ())] == 0
    assert scraped[("bridge_broker_subscribed", ())] == 1
    assert scraped[("bridge_broker_reconnects_total", ())] == 0
    assert scraped[("bridge_db_errors_total", ())] == 0
    pool = {k[1][0][1]: v for k, v in scraped.items() if k[0] == "bridge_db_pool_connections"}
    assert pool["max"] == settings.db_pool_size
    assert 1 <= pool["open"] <= settings.db_pool_size
    assert 0 <= pool["in_use"] <= pool["open"]


async def test_rate_limited_replies_are_counted() -> None:
    # No bridge refuses with rate_limited yet (see README); the counter's rule is tested here.
    metrics = Metrics()
    metrics.answered("rate_limited", 0.01)
    metrics.answered("ok", 0.01)
    scraped = _samples(metrics.exposition().decode())
    assert scraped[("bridge_rate_limited_attempts_total", ())] == 1
    assert scraped[("bridge_activations_total", (("outcome", "rate_limited"),))] == 1


async def test_health_ready_and_bridge_check(settings: Settings) -> None:
    settings = _with_metrics(settings)
    assert settings.metrics_addr is not None
    addr = settings.metrics_addr
    running = await start_bridge(settings)
    try:
        assert await health.fetch(addr, "/healthz") == (200, b"ok\n")
        status, body = await health.fetch(addr, "/readyz")
        assert status == 200, body
        assert json.loads(body) == {"ready": True, "broker": "subscribed", "database": "reachable"}
        assert (await health.fetch(addr, "/nope"))[0] == 404
        done = await bridge_cli(_env(settings, BRIDGE_METRICS_ADDR=addr), "check")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["ready", "broker: subscribed", "database: reachable"]
    finally:
        await running.halt()
    done = await bridge_cli(_env(settings, BRIDGE_METRICS_ADDR=addr), "check")
    assert done.returncode == 1
    assert done.stderr.startswith("error: unavailable: Nothing answers /readyz on")


async def test_not_ready_while_the_database_is_down(settings: Settings, mqtt_url: str) -> None:
    # A bridge whose database refuses connections still serves (with `unavailable`)
    # but must not report ready.
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    settings = _with_metrics(settings.model_copy(update={"database_url": SecretStr(dead)}))
    assert settings.metrics_addr is not None
    running = await start_bridge(settings)
    try:
        status, body = await health.fetch(settings.metrics_addr, "/readyz")
        assert status == 503
        assert json.loads(body) == {
            "ready": False,
            "broker": "subscribed",
            "database": "unreachable",
        }
        reply = await activate(settings, MAC, request_id=secrets.token_hex(4))
        assert reply.reply["code"] == "unavailable"
        scraped = await _scrape(settings.metrics_addr)
        assert scraped[("bridge_db_errors_total", ())] >= 2  # the failed probe + the request
        done = await bridge_cli(_env(settings, BRIDGE_METRICS_ADDR=settings.metrics_addr), "check")
        assert done.returncode == 1
        assert done.stdout.splitlines() == [
            "not ready",
            "broker: subscribed",
            "database: unreachable",
        ]
        assert done.stderr.strip() == (
            "error: unavailable: The bridge is not ready: the database is unreachable."
        )
    finally:
        await running.halt()


async def test_check_without_listener_checks_database_and_broker(settings: Settings) -> None:
    done = await bridge_cli(_env(settings), "check")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ready", "broker: reachable", "database: reachable"]
    dead_broker = f"mqtt://127.0.0.1:{free_port()}"
    done = await bridge_cli(_env(settings, BRIDGE_MQTT_URL=dead_broker), "check")
    assert done.returncode == 1
    assert done.stdout.splitlines() == ["not ready", "broker: unreachable", "database: reachable"]
