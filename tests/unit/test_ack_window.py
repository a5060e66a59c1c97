"""AckWindow: PUBACKs go out only for answered requests, and in arrival order."""

from __future__ import annotations

from typing import Any, cast

import aiomqtt

from bridge.service import AckWindow


class _Recorder:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


class _Client:
    def __init__(self) -> None:
        self._client = _Recorder()


def _message(mid: int, qos: int = 1) -> aiomqtt.Message:
    return aiomqtt.Message("t", b"", qos=qos, retain=False, mid=mid, properties=None)


def test_acks_wait_for_earlier_requests_and_then_go_in_order() -> None:
    client = _Client()
    window = AckWindow(cast(Any, client))
    tickets = [window.arrived(_message(mid)) for mid in (11, 12, 13)]
    window.done(tickets[2])
    window.done(tickets[1])
    assert client._client.acked == []  # 11 is still being answered
    window.done(tickets[0])
    assert client._client.acked == [11, 12, 13]


def test_an_unanswered_request_is_never_acknowledged() -> None:
    client = _Client()
    window = AckWindow(cast(Any, client))
    first = window.arrived(_message(1))
    window.arrived(_message(2))  # abandoned: the broker must send it again
    window.done(first)
    assert client._client.acked == [1]


def test_qos0_needs_no_ack() -> None:
    client = _Client()
    window = AckWindow(cast(Any, client))
    window.done(window.arrived(_message(5, qos=0)))
    assert client._client.acked == []
