"""Connecting to the broker: one place that knows how aiomqtt is configured.

Both the service and the reference device client connect through here, so TLS,
credentials and MQTT 5 session settings are decided once.
"""

from __future__ import annotations

import functools
import socket
import ssl

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.config import MqttEndpoint

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
) -> aiomqtt.Client:
    """An MQTT 5 client; ``persistent`` keeps the session across disconnects."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent:
        properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
    tls_context = ssl.create_default_context(cafile=ca_file) if endpoint.tls else None
    mqtt_client = aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        username=endpoint.username,
        password=endpoint.password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=properties,
        tls_context=tls_context,
        max_inflight_messages=max_inflight,
        timeout=10,
        # Requests and replies are small packets answered at once: Nagle's algorithm
        # would hold one back until the peer's delayed ACK (about 40 ms on Linux).
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    # aiomqtt logs a warning on every publish while more than 10 await their PUBACK; the
    # service bounds them itself (max_in_flight), and under load the warnings cost more
    # CPU than the reply (thousands a second in the bench).
    mqtt_client.pending_calls_threshold = max(10, max_inflight)
    return mqtt_client


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
