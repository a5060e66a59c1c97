"""The MQTT loop of ``bridge serve``: subscribe, dispatch, reply, reconnect, stop.

The only module (with :mod:`bridge.mqtt`) that touches aiomqtt. Work is bounded:
a fixed pool of workers takes requests from a bounded queue, so a burst waits
instead of growing memory, and one slow request never stalls the others.

Failure handling follows the house rule of three answers: a bad request gets an
error reply (in the provisioner); a lost broker gets a reconnect with jittered,
capped backoff and the same persistent session; a bug propagates and crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict

import aiomqtt

from bridge import mqtt, protocol
from bridge.config import MqttEndpoint, Settings
from bridge.metrics import Metrics
from bridge.provisioner import Provisioner

log = logging.getLogger("bridge.service")

BACKOFF_FIRST = 0.2
BACKOFF_CAP = 15.0


def backoff_delay(attempt: int) -> float:
    """Capped exponential backoff with jitter, so replicas do not reconnect in step."""
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not a secret)


class AckWindow:
    """Acknowledges requests once answered, in the order they arrived.

    A request is acknowledged to the broker only after its reply is published (or it
    was refused without a reply), so a bridge killed mid-request gets it again from
    its persistent session when it reconnects. MQTT wants PUBACKs in arrival order, so
    a finished request waits for the ones that came before it.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._pending: OrderedDict[int, tuple[aiomqtt.Message, bool]] = OrderedDict()
        self._serial = 0

    def arrived(self, message: aiomqtt.Message) -> int:
        self._serial += 1
        self._pending[self._serial] = (message, False)
        return self._serial

    def done(self, ticket: int) -> None:
        message, _ = self._pending[ticket]
        self._pending[ticket] = (message, True)
        while self._pending:
            first, (head, finished) = next(iter(self._pending.items()))
            if not finished:
                return
            del self._pending[first]
            mqtt.acknowledge(self._client, head)


class BridgeService:
    """Serves activation requests until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        endpoint: MqttEndpoint,
        provisioner: Provisioner,
        *,
        drain_seconds: float = 5.0,
        ready: asyncio.Event | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._endpoint = endpoint
        self._provisioner = provisioner
        self._drain_seconds = drain_seconds
        self._prefix = settings.topic_prefix
        self.ready = ready or asyncio.Event()  # set while subscribed and serving
        self.reconnects = 0
        self.metrics = metrics or Metrics()
        self._mqtt5 = True  # what the broker accepted on the current connection

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect on broker loss; return once ``stop`` is set."""
        attempt = 0
        while not stop.is_set():
            lost: aiomqtt.MqttError | None = None
            try:
                async with self._connect() as link:
                    client, self._mqtt5 = link.client, link.mqtt5
                    group = self._settings.subscription_group()
                    await client.subscribe(protocol.subscription(self._prefix, group), qos=1)
                    attempt = 0
                    self.ready.set()
                    self.metrics.broker_connected.set(1)
                    log.info(
                        "subscribed",
                        extra={
                            "event": "subscribed",
                            "broker": repr(self._endpoint),
                            "client_id": self._settings.mqtt_client_id,
                            "mqtt": "5" if link.mqtt5 else "3.1.1",
                        },
                    )
                    await self._serve(client, stop)
            except* aiomqtt.MqttError as group:
                lost = group.exceptions[0]  # type: ignore[assignment]
            finally:
                self.ready.clear()
                self.metrics.broker_connected.set(0)
            if lost is not None and not stop.is_set():
                delay = backoff_delay(attempt)
                attempt += 1
                self.reconnects += 1
                self.metrics.broker_reconnects.inc()
                log.warning(
                    "broker connection lost; reconnecting",
                    extra={"event": "reconnect", "error": str(lost), "retry_in": round(delay, 2)},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)

    def _connect(self) -> contextlib.AbstractAsyncContextManager[mqtt.Link]:
        return mqtt.connect(
            self._endpoint,
            self._settings.mqtt_client_id,
            # In a share group, no session outlives its connection: Mosquitto keeps handing
            # a share of the requests to a member's stored session while it is away (2.0.11),
            # so a dead or replaced replica would swallow a share until it came back.
            persistent=self._settings.share_group is None,
            # The broker holds back what does not fit: the queue and the workers.
            max_inflight=min(2 * self._settings.max_in_flight, 65_535),
            manual_ack=True,
        )

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[tuple[int, aiomqtt.Message]] = asyncio.Queue(
            maxsize=self._settings.max_in_flight
        )
        acks = AckWindow(client)
        async with asyncio.TaskGroup() as tg:
            workers = [
                tg.create_task(self._work(client, queue, acks), name=f"bridge-worker-{n}")
                for n in range(self._settings.max_in_flight)
            ]
            reader = tg.create_task(self._read(client, queue, acks), name="bridge-reader")
            stopping = tg.create_task(stop.wait(), name="bridge-stop")
            await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                # Take no more requests; give the ones already taken a bounded time.
                reader.cancel()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._drain_seconds):
                        await queue.join()
                for worker in workers:
                    worker.cancel()
                log.info(
                    "stopped taking requests",
                    extra={"event": "draining_done", "abandoned": queue.qsize()},
                )

    async def _read(
        self,
        client: aiomqtt.Client,
        queue: asyncio.Queue[tuple[int, aiomqtt.Message]],
        acks: AckWindow,
    ) -> None:
        async for message in client.messages:
            # Blocks when full: backpressure, not memory growth (and the broker sends
            # no more than the Receive Maximum of unacknowledged requests).
            await queue.put((acks.arrived(message), message))

    async def _work(
        self,
        client: aiomqtt.Client,
        queue: asyncio.Queue[tuple[int, aiomqtt.Message]],
        acks: AckWindow,
    ) -> None:
        while True:
            ticket, message = await queue.get()
            try:
                with self.metrics.in_flight.track_inprogress():
                    await self._handle(client, message)
                acks.done(ticket)  # not on failure: the broker sends it again
            finally:
                queue.task_done()

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        started = time.perf_counter()
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else b""
        client_id = protocol.client_id_from_topic(self._prefix, topic)
        if client_id is None:
            # No safe topic to answer on: never reply, only record it.
            await self._provisioner.reject_topic(topic, payload)
            self.metrics.unanswered.inc()
            log.warning(
                "request on a topic without a valid client id; not answered",
                extra={"event": "bad_topic", "topic": topic[:200]},
            )
            return
        reply = await self._provisioner.activate(client_id, payload)
        await client.publish(
            protocol.reply_topic(self._prefix, client_id),
            reply.payload,
            qos=1,
            retain=False,
            # MQTT 3.1.1 (the embedded broker) has no properties; the request id correlates.
            properties=mqtt.reply_properties(
                self._settings.reply_expiry_seconds, mqtt.correlation_data(message)
            )
            if self._mqtt5
            else None,
        )
        elapsed = time.perf_counter() - started
        self.metrics.answered(reply.code, elapsed)
        log.info(
            "activation",
            extra={
                "event": "activation",
                "client_id": client_id,
                "request_id": reply.request_id,
                "identifier": reply.identifier,
                "outcome": reply.code,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
