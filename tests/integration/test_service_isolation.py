"""Issue 12 against a bridge in the test's loop, real Mosquitto and PostgreSQL throughout.

One request must never stop the service: a low-order public key is the device's
``malformed``; a fault injected in the handler path (a provisioner that raises or
hangs on one identifier; not a fake broker or database) is that request's
``unavailable`` while every other device is served; a request whose handling brings
the connection down every time is eventually acknowledged and logged instead of
wedging the session. Retained requests are answered when published and never again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import keys, mqtt, protocol
from bridge.admin import Admin
from bridge.config import MqttEndpoint, Settings, parse_mqtt_url
from bridge.metrics import Metrics
from bridge.provisioner import Provisioner, Reply
from bridge.service import MAX_DELIVERIES, BridgeService
from bridge.store import Store
from tests.faults.netfault import resetting_proxy
from tests.helpers import activate, raw_exchange, start_bridge

GOOD = "02:00:00:00:00:01"
POISON = "02:00:00:00:00:66"

_P = 2**255 - 19
#: Encodings of X25519 points of small order (and their non-canonical forms): every
#: shared secret with them is all zeros.
LOW_ORDER_POINTS = {
    "zero": 0,
    "one": 1,
    "order-8a": 325606250916557431795983626356110631294008115727848805560023387167927233504,
    "order-8b": 39382357235489614581723060781553021112529911719440698176882885853963445705823,
    "p-1": _P - 1,
    "p": _P,
    "p+1": _P + 1,
    "zero-high-bit": 2**255,
}


def _b64(point: int) -> str:
    return base64.b64encode(point.to_bytes(32, "little")).decode()


def _request(identifier: str, request_id: str = "r1", **extra: Any) -> bytes:
    body = {
        "request_id": request_id,
        "vendor": "acme",
        "model": "iso-1",
        "identifier": identifier,
        **extra,
    }
    return json.dumps(body).encode()


async def _model(admin: Admin, macs: list[str]) -> None:
    await admin.add_model("acme", "iso-1", kind="mac", claim_required=False)
    await admin.approve("acme", "iso-1", macs)


@pytest.mark.parametrize("point", list(LOW_ORDER_POINTS), ids=list(LOW_ORDER_POINTS))
async def test_attack_low_order_public_key_is_malformed_and_the_bridge_goes_on(
    admin: Admin, settings: Settings, point: str
) -> None:
    await _model(admin, [GOOD])
    metrics = Metrics()
    running = await start_bridge(settings, metrics)
    try:
        payload = _request(GOOD, public_key=_b64(LOW_ORDER_POINTS[point]))
        reply = await raw_exchange(settings, payload, client_id="low-order")
        assert reply["code"] == "malformed", reply
        assert "low-order point" in reply["message"]
        assert reply["request_id"] == "r1"
        assert not running.task.done()
        good = await activate(settings, GOOD, model="iso-1", seal=True)
        assert good.ok, good.reply  # the low-order request consumed nothing
    finally:
        await running.halt()
    assert metrics.handler_errors._value.get() == 0  # refused at the door, not a bug


class FaultyProvisioner(Provisioner):
    """The real provisioner, with a fault injected for one identifier."""

    def __init__(self, *args: Any, fault: Callable[[], Any], on: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fault = fault
        self._on = on.encode()
        self.faulted = 0

    async def activate(self, client_id: str, payload: bytes) -> Reply:
        if self._on in payload:
            self.faulted += 1
            result = self._fault()
            if asyncio.iscoroutine(result):
                await result
        return await super().activate(client_id, payload)


@dataclass
class InLoopService:
    service: BridgeService
    provisioner: FaultyProvisioner
    metrics: Metrics
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def in_loop_service(
    settings: Settings,
    endpoint: MqttEndpoint,
    fault: Callable[[], Any],
    *,
    handler_timeout: float | None = None,
    drain_seconds: float = 5.0,
) -> AsyncIterator[InLoopService]:
    assert settings.database_url is not None
    secret = settings.server_secret()
    async with Store.open(settings.database_url.get_secret_value(), pool_size=4) as store:
        provisioner = FaultyProvisioner(
            store, keys.KeyHasher(secret), keys.ReplayCipher(secret), fault=fault, on=POISON
        )
        metrics = Metrics()
        service = BridgeService(
            settings, endpoint, provisioner, metrics=metrics, drain_seconds=drain_seconds
        )
        if handler_timeout is not None:
            service.handler_timeout = handler_timeout
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        async with asyncio.timeout(15):
            await service.ready.wait()
        try:
            yield InLoopService(service, provisioner, metrics, stop, task)
        finally:
            stop.set()
            async with asyncio.timeout(15):
                await task


def _endpoint(settings: Settings) -> MqttEndpoint:
    assert settings.mqtt_url is not None
    return parse_mqtt_url(settings.mqtt_url.get_secret_value())


def _bug() -> None:
    raise RuntimeError("injected fault in the handler path")


async def test_attack_a_bug_while_handling_one_request_does_not_stop_serve(
    admin: Admin, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await _model(admin, [GOOD, POISON])
    caplog.set_level(logging.INFO, logger="bridge")
    async with in_loop_service(settings, _endpoint(settings), _bug) as running:
        poisoned = await raw_exchange(settings, _request(POISON, "p1"), client_id="poison")
        good = await activate(settings, GOOD, model="iso-1", seal=True)
        assert not running.task.done()
    assert poisoned["code"] == "unavailable", poisoned
    assert poisoned["request_id"] == "p1"
    assert poisoned["retry_after"] == settings.retry_after_seconds
    assert "internal error" in poisoned["message"]
    assert good.ok, good.reply
    assert running.metrics.handler_errors._value.get() == 1
    logged = [r for r in caplog.records if getattr(r, "event", None) == "handler_error"]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback
    assert "injected fault" in caplog.text

    # It was acknowledged: the same session, served again, does not get it once more.
    async with in_loop_service(settings, _endpoint(settings), _bug) as again:
        await asyncio.sleep(1.5)
        late = await activate(settings, POISON, model="iso-1", timeout=10)
    assert again.provisioner.faulted == 1  # only the new request, never the old one
    assert late.reply["code"] == "unavailable"


async def test_attack_a_hung_handler_is_answered_and_others_are_served(
    admin: Admin, settings: Settings
) -> None:
    await _model(admin, [GOOD, POISON])

    async def hang() -> None:
        await asyncio.sleep(3600)

    async with in_loop_service(settings, _endpoint(settings), hang, handler_timeout=1.0) as svc:
        hung = asyncio.create_task(raw_exchange(settings, _request(POISON, "h1"), client_id="hung"))
        good = await activate(settings, GOOD, model="iso-1", seal=True)
        assert good.ok and not hung.done()  # served while the other one hangs
        answer = await hung
    assert answer["code"] == "unavailable" and answer["retry_after"] >= 1, answer
    assert svc.metrics.handler_errors._value.get() == 1


async def test_attack_a_swallowed_cancellation_does_not_hang_the_stop(
    admin: Admin, settings: Settings
) -> None:
    """What Python 3.11's asyncio.wait_for (inside aiomqtt's publish) did in issue 12.

    A worker whose cancellation is swallowed somewhere below it went back to waiting on
    its queue, and the task group, the reconnect and SIGTERM waited for it for ever.
    """
    await _model(admin, [GOOD, POISON])
    swallowed = asyncio.Event()

    async def swallow_the_cancellation() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # and carry on as if nothing happened

    svc_cm = in_loop_service(
        settings, _endpoint(settings), swallow_the_cancellation, drain_seconds=0.5
    )
    async with svc_cm as svc:
        hung = asyncio.create_task(
            raw_exchange(settings, _request(POISON, "s1"), client_id="swallow", timeout=20)
        )
        async with asyncio.timeout(10):
            while svc.provisioner.faulted < 1:  # noqa: ASYNC110 (a counter)
                await asyncio.sleep(0.05)
        svc.stop.set()
        # Drain (0.5 s), cancel the workers: the one below swallows it and must stop anyway.
        async with asyncio.timeout(5):
            await asyncio.shield(svc.task)
        assert swallowed.is_set()
        hung.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await hung


async def test_attack_a_request_that_drops_the_connection_each_time_is_abandoned(
    admin: Admin, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the ledger: redelivered after every reconnect, for ever (a wedged session)."""
    await _model(admin, [GOOD, POISON])
    caplog.set_level(logging.INFO, logger="bridge")
    endpoint = _endpoint(settings)
    async with resetting_proxy(endpoint.host, endpoint.port) as proxy:

        async def drop_connection() -> None:
            proxy.reset()
            await asyncio.sleep(3600)  # cancelled when the bridge sees the connection go

        via_proxy = MqttEndpoint(endpoint.host, proxy.port, False, None, None)
        async with in_loop_service(settings, via_proxy, drop_connection) as svc:
            device = mqtt.client(endpoint, "wedge", persistent=False)
            async with device:
                await device.subscribe(protocol.reply_topic(settings.topic_prefix, "wedge"), 1)
                await device.publish(
                    protocol.activate_topic(settings.topic_prefix, "wedge"),
                    _request(POISON, "w1"),
                    qos=1,
                )
                async with asyncio.timeout(60):
                    while svc.metrics.abandoned._value.get() < 1:  # noqa: ASYNC110 (a counter)
                        await asyncio.sleep(0.2)
                    await svc.service.ready.wait()
                good = await activate(settings, GOOD, model="iso-1", seal=True)
                assert good.ok, good.reply
                await asyncio.sleep(2)  # nothing more comes for it
            faulted = svc.provisioner.faulted
    assert faulted == MAX_DELIVERIES  # handled that often, then acknowledged unanswered
    abandoned = [r for r in caplog.records if getattr(r, "event", None) == "abandoned"]
    assert len(abandoned) == 1 and abandoned[0].__dict__["request_id"] == "w1"


async def _replies(client: aiomqtt.Client, seconds: float) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.append(json.loads(message.payload))
    return seen


async def test_attack_retained_requests_are_answered_once_never_replayed(
    admin: Admin, settings: Settings
) -> None:
    """On a broker that keeps retained messages (the plain test broker does)."""
    await _model(admin, [GOOD])
    endpoint = _endpoint(settings)
    prefix = settings.topic_prefix
    metrics = Metrics()
    # Stored before the bridge ever subscribed: replayed to any new subscription.
    async with mqtt.client(endpoint, "early", persistent=False) as early:
        await early.publish(
            protocol.activate_topic(prefix, "early"), _request(GOOD, "e1"), qos=1, retain=True
        )
    async with mqtt.client(endpoint, "watch", persistent=False) as watch:
        await watch.subscribe(f"{prefix}/reply/#", qos=1)
        first = await start_bridge(settings, metrics)
        try:
            # Published while the bridge runs: answered once, when it is published.
            await watch.publish(
                protocol.activate_topic(prefix, "watch"),
                _request("nonsense", "live"),
                qos=1,
                retain=True,
            )
            seen = await _replies(watch, 2.0)
        finally:
            await first.halt()
        second = await start_bridge(settings, metrics)  # resubscribes: a replay would come now
        try:
            seen += await _replies(watch, 3.0)
        finally:
            await second.halt()
        # Cleared, so the session broker of the other tests does not keep them.
        for client_id in ("early", "watch"):
            await watch.publish(protocol.activate_topic(prefix, client_id), b"", retain=True)
    assert [r["request_id"] for r in seen] == ["live"], seen


async def test_attack_a_request_packed_with_user_properties_never_reaches_the_bridge(
    admin: Admin, settings: Settings
) -> None:
    """paho decodes every user property of a request before anyone can look at it (about
    9 µs each): one packet of 2 MB of tiny properties held the loop for minutes, again on
    every redelivery. The bridge's Maximum Packet Size makes the broker drop it instead."""
    await _model(admin, [GOOD])
    endpoint = _endpoint(settings)
    prefix = settings.topic_prefix
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("a", "b")] * 120_000
    running = await start_bridge(settings)
    try:
        # The bridge runs in this test's loop: a stalled decode stalls the test's clock
        # too, so the whole exchange is timed, from before the flood to the answer.
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with mqtt.client(endpoint, "props-flood", persistent=False) as flood:
            await flood.publish(
                protocol.activate_topic(prefix, "props-flood"),
                _request(GOOD, "flood"),
                qos=1,
                properties=props,
                timeout=30,
            )
            good = await activate(settings, GOOD, model="iso-1", seal=True, timeout=10.0)
        assert good.ok, good.reply
        assert loop.time() - started < 6.0
        assert running.ready.is_set()
    finally:
        await running.halt()
