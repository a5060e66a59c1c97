"""Which of the bridge's own client ids a bridge refuses to devices: a worker of
`serve --workers N` all the workers' ids, a single bridge only its own (issue 18's
limit, closed)."""

from __future__ import annotations

from bridge.config import Settings
from bridge.logins import LoginNamespace
from bridge.workers import worker_settings


def _namespace(settings: Settings) -> LoginNamespace:
    # As bridge.runtime builds it for `serve`.
    return LoginNamespace(
        [],
        bridge_client_id=settings.mqtt_client_id,
        workers_client_id=settings.workers_client_id,
    )


def test_a_single_bridge_whose_id_ends_in_a_worker_suffix_reserves_only_its_own_ids() -> None:
    single = _namespace(Settings(client_id="site-w1"))
    for taken in ("site-w1", "SITE-W1", "site-w1-dynsec", "site-w1-w0"):
        assert single.refusal(taken) is not None, taken
        assert single.is_fixed_operator(taken), taken
    for free in ("site-sensor-7", "site", "site-w0", "site-w2", "site-w10"):
        assert single.refusal(free) is None, free
        assert not single.is_fixed_operator(free), free


def test_a_worker_reserves_every_workers_id() -> None:
    worker = worker_settings(Settings(client_id="site"), 1)
    assert worker.mqtt_client_id == "site-w1"
    assert worker.workers_client_id == "site"
    namespace = _namespace(worker)
    for taken in ("site", "site-w0", "site-w1", "site-w7-dynsec", "site-sensor-7"):
        assert namespace.refusal(taken) is not None, taken
        assert namespace.is_fixed_operator(taken), taken
    for free in ("sites", "sitew0", "thermo-1"):
        assert namespace.refusal(free) is None, free


def test_workers_of_a_long_client_id_share_its_truncated_base() -> None:
    worker = worker_settings(Settings(client_id="x" * 126), 3)
    assert worker.workers_client_id == "x" * 120
    assert worker.mqtt_client_id == f"{'x' * 120}-w3"
    assert _namespace(worker).refusal(f"{'x' * 120}-w0") is not None
