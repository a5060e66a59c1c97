"""Checks of the compose deployment from the host, through the published TLS port.

Run by docker/test-compose.sh (not collected by pytest: it needs the running containers)::

    python -m tests.deploy.compose_checks login HOST PORT CA CLIENT_ID   (key on stdin)
    python -m tests.deploy.compose_checks anonymous-share HOST PORT CA

``login``: the device's own broker login (made by the bridge through the dynamic-security
plugin) is accepted and may publish on its data topic, and a wrong password is refused.
``anonymous-share``: a client without a login cannot join the bridges' share group (the
dynamic-security anonymous group written by ``bridge broker-files``). Exit status 0 when
the check holds, 1 with one sentence on stderr when it does not.
"""

from __future__ import annotations

import secrets
import ssl
import sys
import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

_TIMEOUT = 10.0


class _Session:
    """One MQTT 5 connection over TLS, with the broker's answers waited for one by one."""

    def __init__(self, host: str, port: int, ca: str, client_id: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set_context(ssl.create_default_context(cafile=ca))
        self._host, self._port = host, port
        self._done = threading.Event()
        self.codes: list[ReasonCode] = []
        self.client.on_connect = self._answered
        self.client.on_subscribe = self._subscribed
        self.client.on_publish = self._published

    def _answered(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        self.codes = [code]
        self._done.set()

    def _subscribed(
        self, _c: Any, _u: Any, _m: int, codes: list[ReasonCode], _p: Properties | None
    ) -> None:
        self.codes = list(codes)
        self._done.set()

    def _published(self, _c: Any, _u: Any, _m: int, code: ReasonCode, _p: Any) -> None:
        self.codes = [code]
        self._done.set()

    def _wait(self, what: str) -> list[ReasonCode]:
        if not self._done.wait(_TIMEOUT):
            raise SystemExit(f"error: the broker did not answer the {what} in {_TIMEOUT:g} s")
        self._done.clear()
        return self.codes

    def connect(self, username: str | None, password: str | None) -> ReasonCode:
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect(self._host, self._port)
        self.client.loop_start()
        return self._wait("CONNECT")[0]

    def subscribe(self, topic: str) -> ReasonCode:
        self.client.subscribe(topic, qos=1)
        return self._wait("SUBSCRIBE")[0]

    def publish(self, topic: str) -> ReasonCode:
        self.client.publish(topic, b"hello", qos=1)
        return self._wait("PUBLISH")[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def check_login(host: str, port: int, ca: str, client_id: str, key: str) -> None:
    device = _Session(host, port, ca, client_id)
    code = device.connect(client_id, key)
    if code.is_failure:
        raise SystemExit(f"error: the device's own login was refused: {code}")
    code = device.publish(f"devices/{client_id}/hello")
    device.close()
    if code.is_failure:
        raise SystemExit(f"error: the device may not publish on its own topic: {code}")
    impostor = _Session(host, port, ca, client_id)
    code = impostor.connect(client_id, secrets.token_urlsafe(24))
    impostor.close()
    if not code.is_failure:
        raise SystemExit("error: the broker accepted the device's login with a wrong password")
    print(f"device {client_id}: own login accepted and publishes; a wrong password is refused")


def check_anonymous_share(host: str, port: int, ca: str) -> None:
    stranger = _Session(host, port, ca, f"stranger-{secrets.token_hex(4)}")
    code = stranger.connect(None, None)
    if code.is_failure:
        raise SystemExit(f"error: a device without a login could not connect: {code}")
    refused = []
    for topic in ("$share/bridges/provision/activate/#", "provision/activate/#"):
        code = stranger.subscribe(topic)
        if not code.is_failure:
            raise SystemExit(f"error: a client without a login subscribed to {topic}: {code}")
        refused.append(topic)
    stranger.close()
    print(f"a client without a login may not subscribe to {', '.join(refused)}")


def main(argv: Sequence[str]) -> int:
    match list(argv):
        case ["login", host, port, ca, client_id]:
            check_login(host, int(port), ca, client_id, sys.stdin.readline().strip())
        case ["anonymous-share", host, port, ca]:
            check_anonymous_share(host, int(port), ca)
        case _:
            print(__doc__, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
