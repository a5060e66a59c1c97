"""Connecting to the broker: one place that knows how aiomqtt is configured.

Both the service and the reference device client connect through here, so TLS,
credentials and MQTT 5 session settings are decided once.

MQTT 5 is preferred. A broker that refuses it ("unsupported protocol version", as the
embedded amqtt broker does) gets MQTT 3.1.1 instead: the session is then kept with
``clean_session=False`` and replies carry no Correlation Data or Message Expiry, which
the protocol's request id makes up for (see README, "Embedded broker").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import ssl
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.config import MqttEndpoint

log = logging.getLogger("bridge.mqtt")

#: Every broker failure aiomqtt raises, for modules that must not import aiomqtt.
MqttError = aiomqtt.MqttError

#: The largest packet the bridge accepts on its request connection: a request's payload
#: (at most 4096 bytes by the protocol) with its topic and a little room for properties
#: such as Correlation Data. Larger requests never reach the bridge (no reply).
REQUEST_PACKET_LIMIT = 6144

#: How long the broker keeps the bridge's session (subscriptions, queued requests) while
#: it is away: a day covers a restart, a deploy or a long outage.
SESSION_EXPIRY_SECONDS = 86_400


def client(
    endpoint: MqttEndpoint,
    client_id: str,
    *,
    persistent: bool,
    max_inflight: int = 20,
    ca_file: str | None = None,
    mqtt5: bool = True,
    manual_ack: bool = False,
    timeout: float = 10.0,
) -> aiomqtt.Client:
    """An MQTT 5 (or 3.1.1) client; ``persistent`` keeps the session across disconnects.

    With ``manual_ack`` a QoS 1 message is acknowledged only by :func:`acknowledge`,
    and an MQTT 5 broker is asked (Receive Maximum) to send at most ``max_inflight``
    unacknowledged messages: what is not acknowledged when the process dies is sent
    again to the same client id when it reconnects.
    """
    tls_context = (
        ssl.create_default_context(cafile=ca_file or endpoint.ca_file) if endpoint.tls else None
    )
    session: dict[str, Any]
    if mqtt5:
        properties = None
        # A property-less CONNECT when none is needed: amqtt misreads MQTT 5 properties.
        if persistent or manual_ack:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if persistent:
                properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
            if manual_ack:
                properties.ReceiveMaximum = max_inflight
                # The broker drops what is larger instead of sending it (MQTT 5 Maximum
                # Packet Size): paho decodes a request's properties before anyone can look
                # at them, one by one, so one packet of megabytes of tiny properties would
                # hold the event loop for minutes, and again on each redelivery.
                properties.MaximumPacketSize = REQUEST_PACKET_LIMIT
        session = {
            "protocol": aiomqtt.ProtocolVersion.V5,
            "clean_start": not persistent,
            "properties": properties,
        }
    else:
        session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": not persistent}
    watch = _SocketFailures() if manual_ack else None
    mqtt_client = aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        username=endpoint.username,
        password=endpoint.password,
        identifier=client_id,
        tls_context=tls_context,
        max_inflight_messages=max_inflight,
        timeout=timeout,  # aiomqtt's wait for the CONNACK and for a clean disconnect
        logger=watch.logger(client_id) if watch is not None else None,
        **session,
        # Requests and replies are small packets answered at once: Nagle's algorithm
        # would hold one back until the peer's delayed ACK (about 40 ms on Linux).
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    # aiomqtt logs a warning on every publish while more than 10 await their PUBACK; the
    # service bounds them itself (max_in_flight), and under load the warnings cost more
    # CPU than the reply (thousands a second in the bench).
    mqtt_client.pending_calls_threshold = max(10, max_inflight)
    if manual_ack:
        # aiomqtt has no switch for this; paho's public manual_ack_set is reached
        # through aiomqtt's underlying client.
        _paho(mqtt_client).manual_ack_set(True)
    if watch is not None:
        _watched[mqtt_client] = watch
    _register_writes_safely(mqtt_client)
    _share_property_tables(mqtt_client)
    return mqtt_client


# -- aiomqtt's internals, reached only here -----------------------------------------
# aiomqtt 2.x exposes neither paho's client underneath (manual acknowledgements, the
# socket and its write registration) nor the future its reader completes when the
# connection ends; these accessors are the only places the bridge reaches them.


def _paho(mqtt_client: aiomqtt.Client) -> Any:
    """paho's client under aiomqtt's (aiomqtt has no public accessor)."""
    return mqtt_client._client  # noqa: SLF001 (see above)


def _disconnected(mqtt_client: aiomqtt.Client) -> asyncio.Future[Any]:
    """The future aiomqtt completes when the connection ends (no public one)."""
    future: asyncio.Future[Any] = mqtt_client._disconnected  # noqa: SLF001 (see above)
    return future


def _loop(mqtt_client: aiomqtt.Client) -> asyncio.AbstractEventLoop:
    """The loop aiomqtt registered the socket with (no public accessor)."""
    loop: asyncio.AbstractEventLoop = mqtt_client._loop  # noqa: SLF001 (see above)
    return loop


def _close_socket(mqtt_client: aiomqtt.Client) -> None:
    """paho's own socket close: unregisters it from the loop, then closes it (no public
    call does both without a DISCONNECT packet, which a broken socket cannot send)."""
    _paho(mqtt_client)._sock_close()  # noqa: SLF001 (see above)


def _register_writes_safely(mqtt_client: aiomqtt.Client) -> None:
    """Replace aiomqtt's write registration with one that cannot outlive its socket.

    aiomqtt registers the socket for writing through ``call_soon_threadsafe``, i.e. a
    loop turn later. When the connection is reset in between (issue 12: a reset with
    requests in flight), the registration runs after the socket is closed: on a number
    the next connection's socket may already have, or one uvloop then keeps as a closed
    poll handle, so the next connection's writes (PUBACKs, replies) never leave, its
    publishes wait for ever, and so does SIGTERM. Checked when it runs: only the
    client's current socket is registered.
    """
    loop = _loop(mqtt_client)

    def register_write(paho: Any, _userdata: Any, sock: Any) -> None:
        def writable() -> None:
            try:
                paho.loop_write()
            except Exception as exc:  # as aiomqtt does: a broken connection
                closed = _disconnected(mqtt_client)
                if not closed.done():
                    closed.set_exception(exc)

        def register() -> None:
            if paho.socket() is sock and sock.fileno() >= 0:
                try:
                    loop.add_writer(sock.fileno(), writable)
                except (OSError, RuntimeError) as exc:  # uvloop: the fd's poll died (see below)
                    _declare_broken(mqtt_client, exc)

        loop.call_soon_threadsafe(register)

    _paho(mqtt_client).on_socket_register_write = register_write


#: paho's constant tables of MQTT 5 properties, one copy for every received message.
_PROPERTY_TABLES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


def _share_property_tables(mqtt_client: aiomqtt.Client) -> None:
    """Make each received message's Properties share paho's tables instead of its own.

    paho gives every Properties object its own copy of three constant tables (names,
    types, which property goes in which packet), many times the size of a request, and
    aiomqtt keeps each message in its unbounded incoming queue until the service reads
    it. Mosquitto 2.0.11 keeps to the Receive Maximum only until the first PUBACK and
    then sends its whole queue for the session, so a burst of requests sat there at
    that size (docs/performance.md, "Memory"). paho only reads the tables (to pack,
    unpack and print), so one shared copy serves all; the parsed values stay on each
    object.
    """
    paho = _paho(mqtt_client)
    deliver = paho.on_message  # aiomqtt's: wraps the message and queues it

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        props = getattr(message, "properties", None)
        if isinstance(props, Properties):
            props.types = _PROPERTY_TABLES.types
            props.names = _PROPERTY_TABLES.names
            props.properties = _PROPERTY_TABLES.properties
        deliver(client, userdata, message)

    paho.on_message = on_message


def _declare_broken(mqtt_client: aiomqtt.Client, exc: BaseException) -> None:
    """End a connection the client cannot notice is dead, and free its socket's number.

    paho's socket close unregisters it from the loop (which frees uvloop's dead poll
    handle: left behind, it would make the socket that reuses the number deaf too) and
    closes it; aiomqtt then sees the disconnection like any other.
    """
    closed = _disconnected(mqtt_client)
    if not closed.done():
        closed.set_exception(aiomqtt.MqttError(f"the connection broke: {exc}"))
    with contextlib.suppress(Exception):  # whatever state paho is in, the socket must go
        _close_socket(mqtt_client)


#: How often :func:`watch` looks for a socket error nobody read.
SOCKET_CHECK_SECONDS = 1.0


async def watch(mqtt_client: aiomqtt.Client, every: float = SOCKET_CHECK_SECONDS) -> None:
    """Raise :class:`MqttError` as soon as the connection ends; never return before.

    Run beside the work on a connection, so that its end stops everything at once:
    the reader may be waiting for queue space and the workers for their PUBACKs, and
    neither looks at the connection meanwhile.

    It also ends a connection whose socket holds an error no reader will see: uvloop
    (libuv) answers an error event on a polled socket (a TCP reset) by closing its
    poll handle instead of calling the reader, so paho never reads again and the
    connection is dead without anyone knowing (issue 12: no reconnect, no reply, still
    "ready"). The pending error stays on the socket (SO_ERROR), looked at once a
    second. Under plain asyncio the reader sees it first.
    """
    while True:
        closed = _disconnected(mqtt_client)
        sock = _paho(mqtt_client).socket()
        if not closed.done() and isinstance(sock, socket.socket):
            try:
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError as exc:
                _declare_broken(mqtt_client, exc)
            else:
                if error:
                    _declare_broken(mqtt_client, OSError(error, os.strerror(error)))
        elif not closed.done():
            _declare_broken(mqtt_client, OSError("the socket is gone"))
        # asyncio.wait, not await: a timeout must not cancel aiomqtt's own future.
        await asyncio.wait({closed}, timeout=every)
        if closed.done():
            cause = None if closed.cancelled() else closed.exception()
            raise aiomqtt.MqttError(f"the connection to the broker ended ({cause})") from cause


#: paho's words for a connection the peer closed: the broker ending it while our data was
#: still on its way (a takeover during a reply), as opposed to a timeout or no route.
_PEER_CLOSED = ("Connection reset by peer", "Broken pipe")


class _SocketFailures(logging.Handler):
    """Notices paho's socket errors ("failed to receive on socket: ...").

    paho reports a connection reset and the broker closing the connection with the
    same code; only its error log line tells them apart, and the service needs to
    (see :func:`how_lost`). A logger of the connection's own, never registered with
    ``logging`` (so it goes away with its client), that passes records on to "mqtt".
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen = False
        #: every socket error seen said the peer closed the connection (reset, or a
        #: write after its close)
        self.only_resets = True

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = True
        message = record.getMessage()
        if not any(said in message for said in _PEER_CLOSED):
            self.only_resets = False

    def logger(self, client_id: str) -> logging.Logger:
        own = logging.Logger(f"mqtt.{client_id}", logging.ERROR)
        own.parent = logging.getLogger("mqtt")
        own.addHandler(self)
        return own


_watched: weakref.WeakKeyDictionary[aiomqtt.Client, _SocketFailures] = weakref.WeakKeyDictionary()


#: How long a publish or subscribe may wait for the broker's acknowledgement.
ACK_TIMEOUT_SECONDS = 10.0

#: MQTT 5 DISCONNECT reason: another connection took this client id's session.
SESSION_TAKEN_OVER = 0x8E


async def publish(
    mqtt_client: aiomqtt.Client,
    topic: str,
    payload: bytes,
    *,
    properties: Properties | None = None,
    timeout: float = ACK_TIMEOUT_SECONDS,
) -> None:
    """Publish at QoS 1 (never retained) and wait for the PUBACK, at most ``timeout``.

    aiomqtt bounds the wait with ``asyncio.wait_for``, which on Python 3.11 returns the
    result instead of raising when a cancellation arrives in the same loop turn as the
    PUBACK: a worker cancelled that way went on to wait on its queue forever, and the
    task group (and SIGTERM) with it. Waiting without a bound there (``wait_for`` then
    awaits directly) under ``asyncio.timeout``, which honours cancellation, keeps it.
    A PUBACK that does not come is a broken connection: :class:`MqttError`.
    """
    try:
        async with asyncio.timeout(timeout):
            await mqtt_client.publish(
                topic, payload, qos=1, retain=False, properties=properties, timeout=math.inf
            )
    except TimeoutError as exc:
        raise aiomqtt.MqttError(f"no PUBACK within {timeout:g} s") from exc


async def subscribe_requests(
    mqtt_client: aiomqtt.Client, topic: str, *, mqtt5: bool, timeout: float = ACK_TIMEOUT_SECONDS
) -> None:
    """Subscribe at QoS 1; on MQTT 5 with Retain Handling 2, so no stored message is replayed.

    A retained request would otherwise come again on every (re)subscription, i.e. after
    every reconnect. On MQTT 3.1.1 the broker sends them with the retain flag set, which
    the service ignores. Bounded like :func:`publish`, for the same reason.
    """
    options = (
        SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        if mqtt5
        else None
    )
    if options is None:
        subscribing = mqtt_client.subscribe(topic, qos=1, timeout=math.inf)
    else:  # paho takes the QoS from the options then, and refuses both
        subscribing = mqtt_client.subscribe(topic, options=options, timeout=math.inf)
    task = asyncio.ensure_future(subscribing)
    closed = _disconnected(mqtt_client)
    try:
        # aiomqtt's wait for the SUBACK does not end when the connection does.
        either: set[asyncio.Future[Any]] = {task, closed}
        await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        task.result()
        return
    if closed.done():
        raise aiomqtt.MqttError("the connection ended before the broker's SUBACK")
    raise aiomqtt.MqttError(f"no SUBACK within {timeout:g} s")


#: What paho reports for a connection that ended without a DISCONNECT from the broker.
_UNSPECIFIED = 0x80


def how_lost(mqtt_client: aiomqtt.Client) -> str:
    """How a ``manual_ack`` connection ended: "taken_over", "closed" or "failed".

    "taken_over": the broker said so (MQTT 5 DISCONNECT 0x8E). "closed": the peer
    ended the connection without a DISCONNECT, which is how Mosquitto hands a session
    to another connection with the same client id (as 2.0.11 does; later versions say
    0x8E), and also how it may shut down: in order, or with a reset or a broken pipe
    when the bridge's own data was still on its way (a takeover during a reply). The caller
    tells these apart with a second connection (the service's sentinel). "failed":
    anything else (timeout, another socket error, another reason code).
    """
    closed = _disconnected(mqtt_client)
    if not closed.done() or closed.cancelled():
        return "failed"
    exc = closed.exception()
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return "failed"
    rc = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
    if rc == SESSION_TAKEN_OVER:
        return "taken_over"
    watch = _watched.get(mqtt_client)
    if rc == _UNSPECIFIED and watch is not None and (not watch.seen or watch.only_resets):
        return "closed"
    return "failed"


def acknowledge(mqtt_client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Send the PUBACK of a message received with ``manual_ack``."""
    if message.qos > 0:
        _paho(mqtt_client).ack(message.mid, message.qos)


@dataclass(frozen=True)
class Link:
    """A connected client and the protocol version the broker accepted."""

    client: aiomqtt.Client
    mqtt5: bool


#: CONNACK reason: 0x84 in MQTT 5, which paho also reports for a 3.1.1 broker's code 1.
_UNSUPPORTED_PROTOCOL = 0x84


@contextlib.asynccontextmanager
async def connect(
    endpoint: MqttEndpoint,
    client_id: str,
    *,
    persistent: bool,
    max_inflight: int = 20,
    ca_file: str | None = None,
    manual_ack: bool = False,
    timeout: float = 10.0,
) -> AsyncIterator[Link]:
    """Connect with MQTT 5, or with 3.1.1 when the broker refuses MQTT 5.

    The refusal is only recognised when it comes: amqtt misreads an MQTT 5 CONNECT that
    carries properties (a persistent session's expiry) and waits for bytes that never
    come. Hence ``endpoint.mqtt5`` for a broker known to be 3.1.1-only (the embedded
    one), and a property-less CONNECT for everything that is not persistent.
    """

    def made(mqtt5: bool) -> aiomqtt.Client:
        return client(
            endpoint,
            client_id,
            persistent=persistent,
            max_inflight=max_inflight,
            ca_file=ca_file,
            mqtt5=mqtt5,
            manual_ack=manual_ack,
            timeout=timeout,
        )

    async with contextlib.AsyncExitStack() as stack:
        mqtt5 = endpoint.mqtt5
        try:
            c = await _enter(stack, made(mqtt5))
        except aiomqtt.MqttCodeError as exc:
            if not mqtt5 or exc.rc != _UNSUPPORTED_PROTOCOL:
                raise
            log.debug("broker refused MQTT 5; using MQTT 3.1.1", extra={"event": "mqtt311"})
            mqtt5 = False
            c = await _enter(stack, made(mqtt5))
        yield Link(c, mqtt5)


#: How often :func:`_enter` looks whether paho lost the socket before the CONNACK.
_CONNECT_CHECK_SECONDS = 0.05


async def _enter(stack: contextlib.AsyncExitStack, mqtt_client: aiomqtt.Client) -> aiomqtt.Client:
    """Connect; fail as soon as the connection is lost before the broker's CONNACK.

    aiomqtt ignores a disconnection that comes before the CONNACK and waits out its
    whole timeout (a reset while reconnecting cost the bridge 10 s of deafness, and
    SIGTERM as long). paho has closed the socket by then, so nothing is left to clean.
    """
    entering = asyncio.ensure_future(stack.enter_async_context(mqtt_client))
    while True:
        try:
            await asyncio.wait({entering}, timeout=_CONNECT_CHECK_SECONDS)
        except asyncio.CancelledError:
            entering.cancel()  # no connection attempt outlives its caller
            raise
        if entering.done():
            return entering.result()
        state = getattr(_paho(mqtt_client), "_state", None)
        if getattr(state, "name", "") == "MQTT_CS_CONNECTION_LOST":
            entering.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await entering
            raise aiomqtt.MqttError("the connection was lost before the broker's CONNACK")


def reply_properties(expiry_seconds: int, correlation_data: bytes | None) -> Properties:
    """PUBLISH properties of a reply: expiry always, correlation data when the request had it."""
    if correlation_data is None:
        return _expiry_only(expiry_seconds)
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = expiry_seconds
    props.CorrelationData = correlation_data
    return props


@functools.cache
def _expiry_only(expiry_seconds: int) -> Properties:
    # Building paho Properties costs about as much as parsing the request; most replies
    # carry no correlation data, so they share one object (paho only reads it to pack).
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = expiry_seconds
    return props


def correlation_data(message: aiomqtt.Message) -> bytes | None:
    props = message.properties
    data = getattr(props, "CorrelationData", None) if props is not None else None
    return data if isinstance(data, bytes) else None
