"""Protocol v1 parsing and reply shapes (no I/O)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import protocol
from bridge.errors import Malformed

VALID = {"request_id": "r-1", "vendor": "acme", "model": "thermo-1", "identifier": "x"}


def _parse(obj: object) -> protocol.ActivationRequest:
    return protocol.parse_request(json.dumps(obj).encode())


def test_a_valid_request_parses() -> None:
    request = _parse({**VALID, "v": 1})
    assert request.request_id == "r-1" and request.public_key is None


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"request_id": "has space"}, "'request_id' must be"),
        ({"request_id": "x" * 65}, "'request_id' must be"),
        ({"vendor": ""}, "'vendor' must be"),
        ({"model": "m" * 65}, "'model' must be"),
        ({"identifier": None}, "'identifier' must be"),
        ({"v": "1"}, "version 'v' must be 1"),
        ({"v": True}, "version 'v' must be 1"),
        ({"extra": 1}, "unknown field 'extra'"),
        ({"proof": "AB" * 32}, "'proof' must be 64 lowercase hex"),
        ({"proof": "ab" * 31}, "'proof' must be 64 lowercase hex"),
        ({"proof": 7}, "'proof' must be 64 lowercase hex"),
    ],
)
def test_field_rules(change: dict[str, object], says: str) -> None:
    with pytest.raises(Malformed, match=says):
        _parse({**VALID, **change})


def test_a_proof_is_64_lowercase_hex_and_optional() -> None:
    assert _parse({**VALID, "proof": "0f" * 32}).proof == "0f" * 32
    assert _parse(VALID).proof is None


def test_nan_is_not_json() -> None:
    with pytest.raises(Malformed, match="not valid JSON"):
        protocol.parse_request(b'{"request_id": NaN}')


def test_huge_number_is_refused_cleanly() -> None:
    with pytest.raises(Malformed):
        protocol.parse_request(b'{"request_id": "a", "v": ' + b"9" * 4000 + b"}")


@given(st.binary(max_size=5000))
def test_any_bytes_parse_or_raise_malformed(payload: bytes) -> None:
    with contextlib.suppress(Malformed):
        protocol.parse_request(payload)


@pytest.mark.parametrize(
    ("topic", "client_id"),
    [
        ("p/activate/dev-1", "dev-1"),
        ("p/activate/a:b.c_d-e", "a:b.c_d-e"),
        ("p/activate/a/b", None),
        ("p/activate/", None),
        ("p/activate/+", None),
        ("p/activate/#", None),
        ("p/activate/" + "x" * 129, None),
        ("q/activate/dev", None),
    ],
)
def test_client_id_from_topic(topic: str, client_id: str | None) -> None:
    assert protocol.client_id_from_topic("p", topic) == client_id


def test_subscription_with_and_without_share_group() -> None:
    assert protocol.subscription("provision", None) == "provision/activate/+"
    assert protocol.subscription("provision", "g") == "$share/g/provision/activate/+"


def test_error_reply_shape() -> None:
    body = json.loads(protocol.error_reply("r", "unavailable", "Down.", 5))
    assert body == {
        "v": 1,
        "request_id": "r",
        "status": "error",
        "code": "unavailable",
        "message": "Down.",
        "retry_after": 5,
    }
    assert "retry_after" not in json.loads(protocol.error_reply(None, "malformed", "Bad."))
