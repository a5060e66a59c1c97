"""AckWindow: PUBACKs go out only for answered requests, and in arrival order."""

from __future__ import annotations

import aiomqtt

from bridge.service import AckWindow


class _Recorder:
    """Stands for mqtt.acknowledge on a connection: records the mids handed to it."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def __call__(self, message: aiomqtt.Message) -> None:
        self.acked.append(message.mid)


def _message(mid: int, qos: int = 1) -> aiomqtt.Message:
    return aiomqtt.Message("t", b"", qos=qos, retain=False, mid=mid, properties=None)


def test_acks_wait_for_earlier_requests_and_then_go_in_order() -> None:
    sent = _Recorder()
    window = AckWindow(sent)
    tickets = [window.arrived(_message(mid)) for mid in (11, 12, 13)]
    window.done(tickets[2])
    window.done(tickets[1])
    assert sent.acked == []  # 11 is still being answered
    window.done(tickets[0])
    assert sent.acked == [11, 12, 13]


def test_an_unanswered_request_is_never_acknowledged() -> None:
    sent = _Recorder()
    window = AckWindow(sent)
    first = window.arrived(_message(1))
    window.arrived(_message(2))  # abandoned: the broker must send it again
    window.done(first)
    assert sent.acked == [1]


def test_a_qos0_request_leaves_the_window_in_its_turn() -> None:
    # mqtt.acknowledge sends no PUBACK for it; it must not hold back the ones after it.
    sent = _Recorder()
    window = AckWindow(sent)
    first = window.arrived(_message(5, qos=0))
    second = window.arrived(_message(6))
    window.done(second)
    assert sent.acked == []
    window.done(first)
    assert sent.acked == [5, 6]
