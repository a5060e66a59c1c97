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
import socket
import ssl
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
        session = {
            "protocol": aiomqtt.ProtocolVersion.V5,
            "clean_start": not persistent,
            "properties": properties,
        }
    else:
        session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": not persistent}
    mqtt_client = aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        username=endpoint.username,
        password=endpoint.password,
        identifier=client_id,
        tls_context=tls_context,
        max_inflight_messages=max_inflight,
        timeout=10,
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
        mqtt_client._client.manual_ack_set(True)
    return mqtt_client


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
    try:
        async with asyncio.timeout(timeout):
            await mqtt_client.subscribe(topic, qos=1, options=options, timeout=math.inf)
    except TimeoutError as exc:
        raise aiomqtt.MqttError(f"no SUBACK within {timeout:g} s") from exc


def disconnect_reason(mqtt_client: aiomqtt.Client) -> int | None:
    """The reason code the broker gave when it closed the connection, if it gave one."""
    closed = mqtt_client._disconnected
    if not closed.done() or closed.cancelled():
        return None
    exc = closed.exception()
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return None
    rc = exc.rc
    return rc.value if isinstance(rc, ReasonCode) else rc


def acknowledge(mqtt_client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Send the PUBACK of a message received with ``manual_ack``."""
    if message.qos > 0:
        mqtt_client._client.ack(message.mid, message.qos)


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
        )

    async with contextlib.AsyncExitStack() as stack:
        mqtt5 = endpoint.mqtt5
        try:
            c = await stack.enter_async_context(made(mqtt5))
        except aiomqtt.MqttCodeError as exc:
            if not mqtt5 or exc.rc != _UNSUPPORTED_PROTOCOL:
                raise
            log.debug("broker refused MQTT 5; using MQTT 3.1.1", extra={"event": "mqtt311"})
            mqtt5 = False
            c = await stack.enter_async_context(made(mqtt5))
        yield Link(c, mqtt5)


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
