"""Failover with real processes: the primary's host is lost while devices activate.

Three PostgreSQL 15 nodes under Patroni (etcd as DCS) with ``synchronous_mode`` and
``synchronous_mode_strict``; the bridge on the multi-host DSN with
``target_session_attrs=read-write``. The scenario and its figures are in
``tests/ha/scenario.py`` (``bench/failover.py`` prints the same figures, longer).
"""

from __future__ import annotations

from tests.ha.cluster import PatroniCluster
from tests.ha.scenario import run_failover


async def test_failover_forgets_no_key_and_duplicates_none(
    ha_cluster: PatroniCluster, ha_mqtt_url: str
) -> None:
    report = await run_failover(
        ha_cluster,
        ha_mqtt_url,
        workers=6,
        latency_rounds=1,
        latency_per_round=15,
        before_kill=3.0,
        after_failover=2.0,
        after_rejoin=2.0,
        log=print,
    )
    print("\n".join(report.lines()))
    # The kill was felt: requests met the dead primary and were answered `unavailable`
    # (or timed out) and retried, and Patroni promoted another node.
    assert report.unavailable_replies + report.attempt_timeouts > 0
    assert report.new_primary and report.failover_seconds < 40
    # Every device got its key in the end, and no other answer.
    assert report.unanswered == 0 and report.refused == {}
    assert report.answered_ok == report.devices_started
    # The promise: what a device received, the new primary knows, and so does the old
    # primary once it is back as a replica; nobody got two keys, no key went to two.
    assert report.forgotten == 0
    assert report.forgotten_on_rejoined == 0
    assert report.duplicates == 0
    assert report.keys_received == report.answered_ok
    assert report.keys_issued == report.keys_received
    assert report.old_primary_role.startswith(("replica", "sync_standby"))
