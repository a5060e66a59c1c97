"""The MQTT loop of ``bridge serve``: subscribe, dispatch, reply, reconnect, stop.

The only module (with :mod:`bridge.mqtt`) that touches aiomqtt. Work is bounded:
a fixed pool of workers takes requests from a bounded queue, so a burst waits
instead of growing memory, and one slow request never stalls the others.

Failure handling follows the house rule of three answers: a bad request gets an
error reply (in the provisioner); a lost broker gets a reconnect with jittered,
capped backoff and the same persistent session; a bug while handling one request is
logged with its traceback, counted, answered ``unavailable`` and acknowledged, because
a persistent session would deliver the same request again after every crash. Only a
bug outside request handling ends ``serve``, and so does a session that another
connection keeps taking (MQTT 5 reason 0x8E): two bridges with one client id must not
fight, and the operator has to hear about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import TypeVar

import aiomqtt

from bridge import mqtt, protocol
from bridge.config import MqttEndpoint, Settings
from bridge.errors import ConfigError, RequestError, Unavailable
from bridge.metrics import Metrics
from bridge.provisioner import Provisioner, Reply

log = logging.getLogger("bridge.service")

_T = TypeVar("_T")

BACKOFF_FIRST = 0.2
BACKOFF_CAP = 15.0

#: One request may take this long (database, broker login) before it is given up and
#: answered ``unavailable``: a hung handler must not hold a worker, nor the drain, for good.
HANDLER_TIMEOUT_SECONDS = 30.0
#: A request whose handling the connection's end cut short this many times is
#: acknowledged unanswered when it comes again.
MAX_DELIVERIES = 5
#: Session takeovers (MQTT 5 reason 0x8E) tolerated within TAKEOVER_WINDOW_SECONDS;
#: the next one ends ``serve`` with an error.
MAX_TAKEOVERS = 3
TAKEOVER_WINDOW_SECONDS = 300.0
#: A bridge taken over within this long of its first subscription is the newcomer that
#: took a running bridge's client id: it leaves at once, and the running one keeps serving.
YOUNG_SECONDS = 5.0
#: The least wait before taking a session back, so two bridges never trade it quickly.
TAKEOVER_BACKOFF_SECONDS = 1.0
#: How long the broker may take to accept a connection (CONNACK) or a clean disconnect.
CONNECT_TIMEOUT_SECONDS = 5.0
#: After a connection closed without a reason, how long to wait for the sentinel's to
#: close too (a broker going down closes them all, one after the other).
SENTINEL_GRACE_SECONDS = 0.5


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

    def __init__(self, acknowledge: Callable[[aiomqtt.Message], None]) -> None:
        self._acknowledge = acknowledge  # sends one PUBACK (mqtt.acknowledge on a client)
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
            self._acknowledge(head)


class DeliveryLedger:
    """How often the handling of each request was cut short by the connection's end.

    Keyed by topic and payload digest, bounded (oldest forgotten first), in memory: it
    catches a request whose handling brings the connection down every time it is
    redelivered, which would otherwise repeat for ever. Only interrupted attempts
    count, so a device that sends the same bytes again and again is answered every
    time. A request that kills the whole process is not counted across restarts (no
    storage is shared for it).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._counts: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._limit = limit

    @staticmethod
    def key(message: aiomqtt.Message) -> tuple[str, bytes]:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        return message.topic.value, hashlib.sha256(payload).digest()[:16]

    def interruptions(self, key: tuple[str, bytes]) -> int:
        return self._counts.get(key, 0)

    def interrupted(self, key: tuple[str, bytes]) -> None:
        self._counts[key] = self._counts.pop(key, 0) + 1
        while len(self._counts) > self._limit:
            self._counts.popitem(last=False)

    def finished(self, key: tuple[str, bytes]) -> None:
        self._counts.pop(key, None)


class Sentinel:
    """A second, idle connection to the broker under a client id of its own (random).

    Mosquitto 2.0.11 closes a connection whose session another connection takes
    without saying why, as it closes every connection when it shuts down; only in the
    second case does this one go too. See :meth:`BridgeService._taken_over_from`.
    """

    def __init__(self, endpoint: MqttEndpoint, client_id: str) -> None:
        self._endpoint = endpoint
        self._client_id = client_id
        #: When the current connection was made (monotonic), None while there is none.
        self.up_since: float | None = None

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                async with mqtt.connect(self._endpoint, self._client_id, persistent=False) as link:
                    self.up_since, attempt = time.monotonic(), 0
                    await mqtt.watch(link.client)  # returns only by raising, when it ends
            except aiomqtt.MqttError:
                pass
            finally:
                self.up_since = None
            await asyncio.sleep(backoff_delay(attempt))
            attempt += 1


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
        persistent: bool | None = None,
    ) -> None:
        self._settings = settings
        # A persistent session unless in a share group (see _connect); True for the
        # workers of `serve --workers`, whose supervisor restarts a dead one at once.
        self._persistent = settings.share_group is None if persistent is None else persistent
        self._endpoint = endpoint
        self._provisioner = provisioner
        self._drain_seconds = drain_seconds
        self._prefix = settings.topic_prefix
        self.ready = ready or asyncio.Event()  # set while subscribed and serving
        self.reconnects = 0
        self.metrics = metrics or Metrics()
        self._mqtt5 = True  # what the broker accepted on the current connection
        self.handler_timeout = HANDLER_TIMEOUT_SECONDS
        self._ledger = DeliveryLedger()
        self._first_subscribed: float | None = None
        self._takeovers: deque[float] = deque()
        self._sentinel = Sentinel(
            endpoint, f"{settings.mqtt_client_id[:100]}-sentinel-{secrets.token_hex(4)}"
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect on broker loss; return once ``stop`` is set.

        Raises :class:`ConfigError` when the session keeps being taken over by another
        connection with this bridge's client id.
        """
        sentinel = asyncio.create_task(self._sentinel.run(), name="bridge-sentinel")
        try:
            await self._run(stop)
        finally:
            sentinel.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sentinel

    async def _run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            lost: aiomqtt.MqttError | None = None
            link: mqtt.Link | None = None
            try:
                async with self._connect() as link:
                    client, self._mqtt5 = link.client, link.mqtt5
                    group = self._settings.subscription_group()
                    await mqtt.subscribe_requests(
                        client,
                        protocol.subscription(self._prefix, group),
                        mqtt5=link.mqtt5,
                        timeout=CONNECT_TIMEOUT_SECONDS,
                    )
                    attempt = 0
                    if self._first_subscribed is None:
                        self._first_subscribed = time.monotonic()
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
            if lost is None or stop.is_set():
                continue
            floor = 0.0
            lost_at = time.monotonic()
            if link is not None and await self._taken_over_from(link.client, lost_at):
                self._taken_over()  # raises when it is time to give up
                floor = TAKEOVER_BACKOFF_SECONDS
            delay = max(floor, backoff_delay(attempt))
            attempt += 1
            self.reconnects += 1
            self.metrics.broker_reconnects.inc()
            log.warning(
                "broker connection lost; reconnecting",
                extra={"event": "reconnect", "error": str(lost), "retry_in": round(delay, 2)},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()

    async def _taken_over_from(self, client: aiomqtt.Client, lost_at: float) -> bool:
        """Whether the connection just lost was taken over by another with our client id.

        Said outright with MQTT 5 reason 0x8E. Mosquitto 2.0.11 says nothing: it closes
        the connection (a reset, when a reply of ours was still unread), exactly as when
        it shuts down or restarts. The sentinel tells them apart: a broker going down
        closes the sentinel's connection too, a moment later; a takeover leaves it up.
        So does a network reset of this one connection alone: it counts as a takeover.
        """
        how = mqtt.how_lost(client)
        if how != "closed":
            return how == "taken_over"
        await asyncio.sleep(SENTINEL_GRACE_SECONDS)
        since = self._sentinel.up_since
        return since is not None and since < lost_at

    def _taken_over(self) -> None:
        """Another connection took this bridge's session: say so, and do not fight for it."""
        now = time.monotonic()
        self.metrics.session_takeovers.inc()
        self._takeovers.append(now)
        while self._takeovers and now - self._takeovers[0] > TAKEOVER_WINDOW_SECONDS:
            self._takeovers.popleft()
        client_id = self._settings.mqtt_client_id
        young = self._first_subscribed is not None and now - self._first_subscribed < YOUNG_SECONDS
        giving_up = young or len(self._takeovers) >= MAX_TAKEOVERS
        log.error(
            "another MQTT connection took this bridge's session (client id %r); "
            "set BRIDGE_CLIENT_ID to a value distinct per replica",
            client_id,
            extra={
                "event": "session_taken_over",
                "client_id": client_id,
                "takeovers": len(self._takeovers),
                "action": "exit" if giving_up else "reconnect",
            },
        )
        if giving_up:
            raise ConfigError(
                f"Another MQTT connection uses this bridge's client id {client_id!r} and took "
                f"its session {len(self._takeovers)} time(s); set BRIDGE_CLIENT_ID to a value "
                "distinct per replica (or leave it unset, so each host gets its own)."
            )

    def _connect(self) -> contextlib.AbstractAsyncContextManager[mqtt.Link]:
        return mqtt.connect(
            self._endpoint,
            self._settings.mqtt_client_id,
            # In a share group, no session outlives its connection: Mosquitto keeps handing
            # a share of the requests to a member's stored session while it is away (2.0.11),
            # so a dead or replaced replica would swallow a share until it came back.
            persistent=self._persistent,
            # The broker holds back what does not fit: the queue and the workers.
            max_inflight=min(2 * self._settings.max_in_flight, 65_535),
            manual_ack=True,
            # A CONNACK takes milliseconds; a broker that does not send one in this long
            # is tried again, and a SIGTERM meanwhile waits no longer than this.
            timeout=CONNECT_TIMEOUT_SECONDS,
        )

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[tuple[int, aiomqtt.Message]] = asyncio.Queue(
            maxsize=self._settings.max_in_flight
        )
        acks = AckWindow(functools.partial(mqtt.acknowledge, client))
        async with asyncio.TaskGroup() as tg:
            workers = [
                tg.create_task(self._work(client, queue, acks), name=f"bridge-worker-{n}")
                for n in range(self._settings.max_in_flight)
            ]
            reader = tg.create_task(self._read(client, queue, acks), name="bridge-reader")
            watch = tg.create_task(mqtt.watch(client), name="bridge-connection-watch")
            stopping = tg.create_task(stop.wait(), name="bridge-stop")
            await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                # Take no more requests; give the ones already taken a bounded time.
                reader.cancel()
                watch.cancel()
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
        try:
            async for message in client.messages:
                ticket = acks.arrived(message)
                if message.retain:
                    # A broker replaying a stored request (MQTT 3.1.1, or a broker that
                    # ignores Retain Handling): it was answered when it was published.
                    acks.done(ticket)
                    self.metrics.retained_ignored.inc()
                    log.debug("retained request ignored", extra={"event": "retained_ignored"})
                    continue
                # Blocks when full: backpressure, not memory growth (and the broker sends
                # no more than the Receive Maximum of unacknowledged requests).
                await queue.put((ticket, message))
        except aiomqtt.MqttError:
            self.ready.clear()  # not serving from now on, however long the teardown takes
            raise

    async def _work(
        self,
        client: aiomqtt.Client,
        queue: asyncio.Queue[tuple[int, aiomqtt.Message]],
        acks: AckWindow,
    ) -> None:
        me = asyncio.current_task()
        assert me is not None
        while True:
            # A cancellation some library swallowed (see mqtt.publish) is still pending on
            # this task: honour it here, or the task group would wait on queue.get() forever.
            if me.cancelling():
                raise asyncio.CancelledError
            ticket, message = await queue.get()
            try:
                with self.metrics.in_flight.track_inprogress():
                    await self._handle(client, message)
                acks.done(ticket)  # not when the reply could not be sent: it comes again
            finally:
                queue.task_done()

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        key = self._ledger.key(message)
        cut_short = self._ledger.interruptions(key)
        if cut_short >= MAX_DELIVERIES:
            self._ledger.finished(key)
            self.metrics.abandoned.inc()
            payload = message.payload if isinstance(message.payload, bytes) else b""
            log.error(
                "request abandoned: its handling was cut short %d times by the connection's "
                "end; acknowledged without a reply",
                cut_short,
                extra={
                    "event": "abandoned",
                    "topic": message.topic.value[:200],
                    "request_id": protocol.request_id_of(payload),
                },
            )
            return
        try:
            await self._answer(client, message)
        except (asyncio.CancelledError, Exception):  # cut short (cancelled, reply not sent)
            self._ledger.interrupted(key)
            raise
        self._ledger.finished(key)

    async def _answer(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        started = time.perf_counter()
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else b""
        client_id = protocol.client_id_from_topic(self._prefix, topic)
        if client_id is None:
            # No safe topic to answer on: never reply, only record it.
            await self._contained(self._provisioner.reject_topic(topic, payload), payload)
            self.metrics.unanswered.inc()
            log.warning(
                "request on a topic without a valid client id; not answered",
                extra={"event": "bad_topic", "topic": topic[:200]},
            )
            return
        reply = await self._contained(self._provisioner.activate(client_id, payload), payload)
        await mqtt.publish(
            client,
            protocol.reply_topic(self._prefix, client_id),
            reply.payload,
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

    async def _contained(
        self, handling: Coroutine[object, object, _T], payload: bytes
    ) -> _T | Reply:
        """Run the handling of one request; a failure in it becomes that request's reply.

        The three answers: a refusal that escaped the provisioner is still the device's
        (its code and sentence); a database that is down is ``unavailable``; anything
        else is a bug, loud (traceback once, a metric) but contained: ``unavailable``,
        since the fault is the bridge's. Cancellation always propagates.
        """
        try:
            async with asyncio.timeout(self.handler_timeout):
                return await handling
        except RequestError as exc:
            request_id = protocol.request_id_of(payload)
            body = protocol.error_reply(request_id, exc.code, exc.message)
            return Reply(body, exc.code, request_id)
        except Unavailable as exc:
            return self._unavailable(protocol.request_id_of(payload), exc.message)
        except Exception:
            request_id = protocol.request_id_of(payload)
            self.metrics.handler_errors.inc()
            log.exception(
                "handling a request failed; answered 'unavailable'",
                extra={"event": "handler_error", "request_id": request_id},
            )
            retry_after = self._settings.retry_after_seconds
            return self._unavailable(
                request_id,
                "The bridge could not handle this request because of an internal error; "
                f"retry after {retry_after} seconds.",
            )

    def _unavailable(self, request_id: str | None, sentence: str) -> Reply:
        retry_after = self._settings.retry_after_seconds
        body = protocol.error_reply(request_id, Unavailable.code, sentence, retry_after)
        return Reply(body, Unavailable.code, request_id)
