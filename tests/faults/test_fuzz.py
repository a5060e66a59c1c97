"""Fault suite (3): ten thousand hypothesis-made payloads and topics through the real broker.

Hypothesis draws the messages (raw bytes, JSON of any shape, near-valid requests with
hostile field values, activation topics whose client id breaks the rule); they are
published in batches to one ``bridge serve`` process. Every message must be accounted
for: each one on a valid topic is answered, every one is audited, the bridge never
exits, a valid activation still succeeds afterwards, and the bridge's resident memory
has grown by less than :data:`RSS_GROWTH_LIMIT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import mqtt, protocol
from bridge.admin import Admin
from bridge.client import activate_device
from bridge.config import Settings, parse_mqtt_url
from tests.faults.cluster import TEST_SECRET, Broker, Postgres, new_database, replica_set

MESSAGES = 10_000
PER_EXAMPLE = 10
BATCH = 500
#: The bridge may grow by this much while it chews through the fuzz (it starts near
#: 60 MB). Unbounded growth, e.g. one retained object per message, would pass it easily:
#: 10,000 payloads of up to 4 kB are 40 MB on their own.
RSS_GROWTH_LIMIT = 30 * 1024 * 1024
FUZZ_CLIENTS = [f"fuzz-{n}" for n in range(8)]
MODELS = [("acme", "mac-1", "mac"), ("acme", "imei-1", "imei"), ("acme", "sn-1", "serial")]
GOOD_MAC = "02:00:00:00:00:01"

_any_text = st.text(max_size=80)
_RID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
_field_value: st.SearchStrategy[Any] = st.one_of(
    _any_text,
    st.text(alphabet=st.characters(codec="utf-8"), max_size=70),
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
_json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text, inner, max_size=4),
    max_leaves=30,
)


@st.composite
def _near_valid(draw: st.DrawFn) -> bytes:
    """A request that is almost right: real model names, one or more fields hostile."""
    vendor, model, _ = draw(st.sampled_from(MODELS))
    body: dict[str, Any] = {
        "request_id": draw(st.text(alphabet=_RID_CHARS, min_size=1, max_size=64)),
        "vendor": vendor,
        "model": model,
        "identifier": draw(
            st.one_of(
                _any_text,
                st.text(alphabet="0123456789ABCDEFabcdef:.- ", max_size=20),
                st.text(alphabet="0123456789 /-", min_size=10, max_size=20),
            )
        ),
    }
    for name in draw(st.lists(st.sampled_from([*body, "public_key", "v", "x"]), max_size=3)):
        body[name] = draw(_field_value)
    return json.dumps(body, allow_nan=False).encode()


_payloads = st.one_of(
    st.binary(max_size=600),
    st.binary(min_size=4000, max_size=4200),  # both sides of the size limit
    _json_value.map(lambda v: json.dumps(v).encode()),
    _near_valid(),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
)


#: A client id that breaks the rule but can still be a topic level. MQTT forbids '/',
#: wildcards and NUL there, and mosquitto disconnects a publisher whose topic holds a
#: control character or a Unicode noncharacter: those never reach the bridge at all.
def _topic_safe(text: str) -> bool:
    return not any(0xFDD0 <= ord(c) <= 0xFDEF or (ord(c) & 0xFFFE) == 0xFFFE for c in text)


_bad_client_ids = (
    st.text(
        alphabet=st.characters(
            codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="/+#"
        ),
        max_size=150,
    )
    .filter(_topic_safe)
    .filter(lambda s: protocol.CLIENT_ID_RE.fullmatch(s) is None)
)


def _draw_messages() -> list[tuple[str | None, bytes]]:
    """(bad client id or None for a valid fuzz client, payload), MESSAGES of them."""
    drawn: list[tuple[str | None, bytes]] = []

    # Ten messages per example: hypothesis's cost is per example, the broker's per message.
    @settings(
        max_examples=MESSAGES // PER_EXAMPLE,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        batch=st.lists(
            st.tuples(st.one_of(st.none(), st.none(), st.none(), _bad_client_ids), _payloads),
            min_size=PER_EXAMPLE,
            max_size=PER_EXAMPLE,
        )
    )
    def collect(batch: list[tuple[str | None, bytes]]) -> None:
        drawn.extend(batch)

    collect()
    return drawn[:MESSAGES]


async def _audit_count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        # Repeated device failures are one tallied entry with a count (schemas/008).
        count: int = await conn.fetchval(
            "SELECT coalesce(sum(1 + repeats), 0) FROM audit_log WHERE action = 'activate'"
        )
    finally:
        await conn.close()
    return count


def _log_summary(path: Path) -> str:
    """What the bridge said it handled, to tell a message it never got from an audit lost.

    Every request it takes is logged once, as an ``activation`` or a ``bad_topic`` event;
    every other event (errors, reconnections, abandoned requests) is shown in full.
    """
    events: dict[str, int] = {}
    unusual: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line).get("event", "?")
        except ValueError:
            event = "(not json)"
        events[event] = events.get(event, 0) + 1
        if event not in {"activation", "bad_topic"}:
            unusual.append(line[:600])
    return f"bridge log events {events}; the other lines:\n" + "\n".join(unusual[-60:])


@pytest.mark.slow
async def test_ten_thousand_fuzzed_messages_leave_the_bridge_serving_in_bounded_memory(
    fault_postgres: Postgres, broker: Broker
) -> None:
    messages = await asyncio.to_thread(_draw_messages)
    assert len(messages) == MESSAGES  # hypothesis really produced them all
    url = await new_database(fault_postgres, f"fuzz_{secrets.token_hex(4)}")
    prefix = f"fuzz-{secrets.token_hex(4)}/provision"
    admin_settings = Settings(database_url=url, secret=TEST_SECRET, state_dir=Path("/nonexistent"))
    async with Admin.connect(admin_settings, actor="fuzz") as admin:
        for vendor, model, kind in MODELS:
            await admin.add_model(
                vendor, model, kind=kind, claim_required=False, plaintext_keys=True
            )
        await admin.approve("acme", "mac-1", [GOOD_MAC, "02:00:00:00:00:02"])
    endpoint = parse_mqtt_url(broker.url)

    async with replica_set(
        database_url=url, mqtt_url=broker.url, prefix=prefix, count=1, share_group=None
    ) as (bridge,):
        process = psutil.Process(bridge.pid)
        warm = await activate_device(
            endpoint, prefix=prefix, vendor="acme", model="mac-1", identifier="02:00:00:00:00:02"
        )
        assert warm.ok, warm.reply
        rss_before = process.memory_info().rss

        expected_replies = sum(bad is None for bad, _ in messages)
        replies = 0
        async with (
            mqtt.client(endpoint, "fuzz-monitor", persistent=False) as monitor,
            mqtt.client(endpoint, "fuzz-publisher", persistent=False, max_inflight=BATCH) as pub,
        ):
            await monitor.subscribe(f"{prefix}/reply/+", qos=1)

            async def count_replies() -> None:
                nonlocal replies
                async for _ in monitor.messages:
                    replies += 1

            counter = asyncio.create_task(count_replies())
            try:
                for first in range(0, MESSAGES, BATCH):
                    batch = messages[first : first + BATCH]
                    await asyncio.gather(
                        *(
                            pub.publish(
                                protocol.activate_topic(
                                    prefix, bad if bad is not None else FUZZ_CLIENTS[n % 8]
                                ),
                                payload,
                                qos=1,
                            )
                            for n, (bad, payload) in enumerate(batch, start=first)
                        )
                    )
                    # Wait for this batch's answers before the next: the test measures the
                    # bridge's memory, not a backlog piled up at the broker.
                    target = sum(bad is None for bad, _ in messages[: first + BATCH])
                    async with asyncio.timeout(60):
                        while replies < target:  # noqa: ASYNC110 (a counter, polled)
                            await asyncio.sleep(0.05)
                    assert bridge.alive(), bridge.log_path.read_text()[-3000:]
                # Messages on topics without a valid client id get no reply to wait for:
                # their audit entries are the last to land.
                deadline = asyncio.get_running_loop().time() + 90
                while (audited := await _audit_count(url)) < MESSAGES + 1:
                    assert asyncio.get_running_loop().time() < deadline, (
                        f"{audited} of {MESSAGES + 1} attempts audited; "
                        + _log_summary(bridge.log_path)
                    )
                    await asyncio.sleep(0.2)
            finally:
                counter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await counter

        rss_after = process.memory_info().rss
        after = await activate_device(
            endpoint, prefix=prefix, vendor="acme", model="mac-1", identifier=GOOD_MAC
        )
        assert after.ok, after.reply
        assert bridge.alive()

    assert replies == expected_replies
    # Every message audited, plus the two valid activations.
    audited = await _audit_count(url)
    assert audited == MESSAGES + 2, _log_summary(bridge.log_path)
    growth = rss_after - rss_before
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.1f} MiB"
    print(f"fuzz: {MESSAGES} messages, RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB")
