"""What Mosquitto pushes to one MQTT 5 client past its Receive Maximum, per broker option.

A plain paho client (Receive Maximum 128, persistent session, manual acknowledgements)
subscribes ``req/#``; 3,000 QoS 1 requests are published while it is connected, or while
it is away (queued in its session); it then acknowledges what it holds, one by one, at
about 2,000/s, and reconnects once to collect whatever the session still keeps. Printed
per configuration: how many distinct requests arrived, and the most it held
unacknowledged at once (a broker keeping to the Receive Maximum: 128).

Run: python bench/receive_max.py
"""

from __future__ import annotations

import collections
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests import services

REQUESTS = 3_000
RECEIVE_MAXIMUM = 128
CONFIGURATIONS = [
    "",  # Mosquitto's default max_queued_messages is 1000
    "max_queued_messages 100000",
    "max_queued_messages 100000\nmax_inflight_messages 20",
    "max_queued_messages 100000\nmax_inflight_bytes 2000",
    "max_queued_messages 100000\nmax_inflight_messages 20\nmax_inflight_bytes 2000",
    "max_queued_messages 500",
    "max_queued_messages 100000\nmax_queued_bytes 20000",
]


class Consumer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.held: collections.deque[mqtt.MQTTMessage] = collections.deque()
        self.got: set[int] = set()
        self.peak = 0
        self.lock = threading.Lock()

    def on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.held.append(message)
            self.got.add(int(message.payload))
            self.peak = max(self.peak, len(self.held))

    def connect(self) -> mqtt.Client:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="consumer", protocol=mqtt.MQTTv5,
            manual_ack=True,
        )  # fmt: skip
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        props.SessionExpiryInterval = 3600
        c.on_message = self.on_message
        c.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        c.loop_start()
        time.sleep(0.2)
        return c

    def drain(self, c: mqtt.Client) -> None:
        """Acknowledge what arrives, one at a time, until nothing has come for a second."""
        idle = 0
        while idle < 200:
            with self.lock:
                message = self.held.popleft() if self.held else None
            if message is None:
                idle += 1
                time.sleep(0.005)
                continue
            idle = 0
            c.ack(message.mid, message.qos)
            time.sleep(0.0005)


def run(extra: str, away: bool) -> str:
    port = services.free_port()
    conf = (
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"set_tcp_nodelay true\n{extra}\n"
    )
    with services.mosquitto_process(conf, port):
        consumer = Consumer(port)
        c = consumer.connect()
        c.subscribe("req/#", qos=1)
        time.sleep(0.2)
        if away:
            c.disconnect()
            c.loop_stop()
            time.sleep(0.2)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for i in range(REQUESTS):
            pub.publish(f"req/{i % 50}", str(i), qos=1)
        time.sleep(1.0)
        if away:
            c = consumer.connect()
        consumer.drain(c)
        # Anything the broker still keeps for the session comes after a reconnect.
        c.disconnect()
        c.loop_stop()
        c = consumer.connect()
        consumer.drain(c)
        c.disconnect()
        c.loop_stop()
        pub.loop_stop()
        got, peak = len(consumer.got), consumer.peak
        return f"received {got:,}/{REQUESTS:,} (also after a reconnect), most held unacked {peak:,}"


if __name__ == "__main__":
    print(f"Receive Maximum {RECEIVE_MAXIMUM}; {REQUESTS:,} QoS 1 requests")
    for extra in CONFIGURATIONS:
        name = extra.replace("\n", ", ") or "(defaults)"
        for away in (False, True):
            when = "queued while away" if away else "while connected"
            print(f"{name}; {when}: {run(extra, away)}", flush=True)
