"""Bulk approval costs the bridge what it costs the sender: per-request caps answered before
anything is expanded, and bounded memory inside the caps. Against `bridge api` and
`bridge approve --file` as real processes on a real PostgreSQL; memory is the process's
peak resident size (VmHWM, or getrusage for a finished child)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bridge.admin import Admin
from bridge.config import Settings
from bridge.tokens import create_token
from tests.helpers import api_server
from tests.integration.test_cli import _env

MIB = 1 << 20
#: What one request may hold: 1,000,000 identifiers (a full range of 000000000000..0F423F).
FULL_RANGE = "000000000000..0000000F423F"


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


async def _vendor(admin: Admin) -> dict[str, str]:
    await admin.add_model("acme", "thermo-1", kind="mac")
    issued = await create_token(admin.store, "vendor", "acme", actor="test")
    return {"Authorization": f"Bearer {issued.token}"}


async def _warm(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    # One small import first, so the peak measured after it is the hostile body's alone.
    warm = await http.post(
        "/v1/models/acme/thermo-1/approvals/bulk",
        json={"rows": ["00:00:00:00:00:00..00:00:00:00:03:FF"], "dry_run": True},
        headers=headers,
    )
    assert warm.status_code == 200, warm.text


async def test_attack_bulk_ranges_over_the_cap_are_refused_before_expansion(
    admin: Admin, settings: Settings
) -> None:
    """10,000 rows of 1,000,000-identifier ranges (10^10 identifiers): 413 at once."""
    vendor = await _vendor(admin)
    rows = [FULL_RANGE] * 10_000
    with api_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            await _warm(http, vendor)
            before = _peak_rss(server.process.pid)
            start = time.monotonic()
            answer = await http.post(
                "/v1/models/acme/thermo-1/approvals/bulk", json={"rows": rows}, headers=vendor
            )
            elapsed = time.monotonic() - start
            growth = _peak_rss(server.process.pid) - before
    assert answer.status_code == 413, answer.text[:300]
    assert answer.json() == {
        "code": "too_large",
        "message": "The rows hold 10,000,000,000 identifiers, and one request approves at "
        "most 1,000,000; split them over several requests.",
    }
    assert elapsed < 5, elapsed
    assert growth < 30 * MIB, growth
    assert await admin.list_devices("acme", "thermo-1") == []


async def test_attack_bulk_approval_at_the_cap_runs_in_bounded_memory(
    admin: Admin, settings: Settings
) -> None:
    """The largest request the caps allow: 1,000,000 identifiers, with duplicates on top."""
    vendor = await _vendor(admin)
    with api_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            await _warm(http, vendor)
            before = _peak_rss(server.process.pid)
            answer = await http.post(
                "/v1/models/acme/thermo-1/approvals/bulk",
                json={"rows": [FULL_RANGE], "dry_run": True},
                headers=vendor,
            )
            growth = _peak_rss(server.process.pid) - before
    assert answer.status_code == 200, answer.text[:300]
    body = answer.json()
    assert (body["added"], body["already"], body["duplicates"]) == (1_000_000, 0, 0)
    # Expanded in memory, the old code's set of a million identifiers grew this by
    # over 200 MiB; two batches of 50,000 are a few MiB.
    assert growth < 60 * MIB, growth


async def test_bulk_caps_are_named_in_the_refusal(admin: Admin, settings: Settings) -> None:
    vendor = await _vendor(admin)
    url = "/v1/models/acme/thermo-1/approvals/bulk"
    with api_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            rows = await http.post(
                url, json={"rows": ["00:00:00:00:00:01"] * 10_001}, headers=vendor
            )
            total = await http.post(
                url,
                json={"rows": [FULL_RANGE, "00:00:00:00:00:01..00:00:00:00:00:02"]},
                headers=vendor,
            )
            one_range = await http.post(
                url,
                json={"rows": ["000000000000..0000000F4240", "00:00:00:00:00:01"]},
                headers=vendor,
            )
            duplicates = await http.post(
                url,
                json={
                    "rows": [
                        "00:00:00:00:00:01..00:00:00:00:00:03",
                        "000000000002",
                        "00-00-00-00-00-03",
                        "00:00:00:00:00:04",
                    ]
                },
                headers=vendor,
            )
    assert rows.status_code == 422
    assert rows.json()["message"] == (
        "The field 'rows' is invalid: List should have at most 10000 items after "
        "validation, not 10001."
    )
    assert total.status_code == 413
    assert "one request approves at most 1,000,000" in total.json()["message"]
    # Over the per-range cap, as in a file: that row is refused, the others loaded.
    assert one_range.status_code == 200, one_range.text
    refused = one_range.json()
    assert (refused["added"], refused["refused_total"]) == (1, 1)
    assert refused["refused"][0]["row"] == 1
    assert "split it into ranges of at most 1,000,000" in refused["refused"][0]["reason"]
    # Duplicates are counted by the database, across rows and spellings.
    assert duplicates.status_code == 200, duplicates.text
    counted = duplicates.json()
    assert (counted["added"], counted["already"], counted["duplicates"]) == (3, 1, 2)


def _maxrss_of(
    command: list[str], env: dict[str, str]
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run ``command`` in a fresh child and return its peak resident size (bytes)."""
    measure = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(done.stderr)\n"
        "sys.stdout.write(done.stdout)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(done.returncode)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", measure, *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    *out, peak = run.stdout.strip().splitlines()
    return int(peak) * 1024, subprocess.CompletedProcess(
        run.args, run.returncode, "\n".join(out), run.stderr
    )


async def test_attack_large_approval_file_imports_in_bounded_memory(
    admin: Admin, settings: Settings, tmp_path: Path
) -> None:
    """`bridge approve --file`: 1.3 million identifiers (a range, lines, duplicates, bad rows)."""
    await admin.add_model("acme", "thermo-1", kind="mac")
    env = _env(settings)
    cli = [sys.executable, "-m", "bridge", "approve", "acme", "thermo-1", "--dry-run", "--file"]
    small = tmp_path / "small.txt"
    small.write_text("00:00:00:00:00:01\n")
    large = tmp_path / "large.txt"
    with large.open("w") as f:
        f.write(f"{FULL_RANGE}\n")  # 1,000,000
        for n in range(300_000):  # 200,000 duplicates of the range, 100,000 new
            f.write(f"{n * 5:012X}\n")
        for n in range(5_000):  # refused: counted, the first 1,000 listed
            f.write(f"bad-{n}\n")
    baseline, ran_small = await asyncio.to_thread(_maxrss_of, [*cli, str(small)], env)
    assert ran_small.returncode == 0, ran_small.stderr
    peak, ran = await asyncio.to_thread(_maxrss_of, [*cli, str(large)], env)
    assert ran.returncode == 1, ran.stderr[-500:]  # bad rows: exit status 1
    assert ran.stdout.strip().splitlines()[-1] == (
        "dry run, nothing written: 1100000 would be added, 0 already approved, 5000 refused, "
        "200000 duplicate(s) ignored"
    )
    assert ran.stderr.count("refused:") == 1000
    assert "... and 4,000 more refused lines" in ran.stderr
    assert peak - baseline < 60 * MIB, (peak, baseline)
    assert await admin.list_devices("acme", "thermo-1") == []
