"""Fault suite (1): three replicas, a fleet, and every kind of process being killed.

Three ``bridge serve`` processes share one subscription; a few hundred devices, each
its own MQTT client id, retry with the same request id until answered, while the
broker is restarted twice, PostgreSQL twice (once cleanly, once as a crash) and one
bridge is SIGKILLed three times. The bar: every device answered with exactly one key,
the database verifies that key, exactly one fresh key was issued per device, and no
bridge exited on its own.
"""

from __future__ import annotations

import pytest

from tests.faults.cluster import Postgres
from tests.faults.scenario import run_chaos

DEVICES = 300


@pytest.mark.slow
async def test_fleet_survives_broker_database_and_bridge_faults(fault_postgres: Postgres) -> None:
    report = await run_chaos(
        fault_postgres, devices=DEVICES, spread_seconds=16.0, settle_timeout=90.0
    )
    summary = "\n".join(report.lines() + report.timeline)
    assert report.lost == 0, summary
    assert report.answered == DEVICES, summary
    assert report.duplicated_keys == 0, summary
    assert report.wrong_outcome == 0, summary
    assert report.db_mismatch == 0, summary
    assert report.half_written == 0, summary
    assert report.fresh_keys_issued == DEVICES, summary
    # The faults really happened and met devices in flight, and the bridges rode them out.
    assert report.unavailable_replies > 0, summary
    assert report.broker_restarts == 2, summary
    assert report.db_restarts == 2, summary
    assert report.bridge_kills == 3, summary
    assert report.bridge_reconnects >= 2 * 3, summary  # each replica, each broker restart
    assert report.bridges_alive_at_end == 3, summary
    assert report.bridge_exit_codes == [0, 0, 0], summary  # SIGTERM drains and exits 0
