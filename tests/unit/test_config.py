"""Settings and URLs (no I/O)."""

from __future__ import annotations

import argparse
import re
import secrets
from pathlib import Path

import pytest

from bridge.cli import parse_duration, parse_since
from bridge.config import (
    DEV_SECRET,
    MIN_SECRET_BYTES,
    PUBLISHED_SECRETS,
    Settings,
    load_settings,
    parse_mqtt_url,
)
from bridge.errors import ConfigError


def test_mqtt_url_parts_and_password_hidden() -> None:
    endpoint = parse_mqtt_url("mqtts://bridge:s%40cret@broker.example:8884")
    assert (endpoint.host, endpoint.port, endpoint.tls) == ("broker.example", 8884, True)
    assert (endpoint.username, endpoint.password) == ("bridge", "s@cret")
    assert "s@cret" not in repr(endpoint)
    assert parse_mqtt_url("mqtt://localhost").port == 1883
    assert parse_mqtt_url("mqtts://localhost").port == 8883


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://h:notaport"])
def test_bad_mqtt_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_mqtt_url(url)


def test_secret_is_required_unless_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGE_SECRET", raising=False)
    with pytest.raises(ConfigError, match="BRIDGE_SECRET is not set"):
        Settings().server_secret()
    assert Settings(dev=True).server_secret() == DEV_SECRET.encode()
    strong = secrets.token_urlsafe(32)
    assert Settings(secret=strong).server_secret() == strong.encode()


def test_attack_a_short_server_secret_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings(secret="short").server_secret()
    assert "BRIDGE_SECRET is 5 bytes long; it must be at least 32 bytes" in refused.value.message
    assert "secrets.token_urlsafe(32)" in refused.value.message
    with pytest.raises(ConfigError, match="31 bytes long"):
        Settings(secret="x" * 31).server_secret()
    # Bytes, not characters: 11 three-byte characters are 33 bytes.
    assert len(Settings(secret="€" * 11).server_secret()) == 33
    # --dev is for development, and says so: it takes anything.
    assert Settings(secret="short", dev=True).server_secret() == b"short"


@pytest.mark.parametrize("published", sorted(PUBLISHED_SECRETS))
def test_attack_a_server_secret_published_in_the_repository_is_refused(published: str) -> None:
    for value in (published, f" {published}\n"):
        with pytest.raises(ConfigError, match="published in this project's repository"):
            Settings(secret=value).server_secret()
    assert Settings(secret=published, dev=True).server_secret() == published.encode()


#: Where a secret is written out: an environment assignment or a compose/YAML entry
#: (quoted or not; a value starting with `$` comes from the environment), or a Python
#: keyword or constant (quoted).
_SECRET_LITERALS = (
    re.compile(
        r"""BRIDGE_(?:PREVIOUS_)?SECRETS?\s*[=:]\s*(?:"([^"$]+)"|'([^'$]+)'|([^\s"'$`,)]+))"""
    ),
    re.compile(r"""(?:\bsecret|\b(?:DEV_|TEST_|ROTATED_)?SECRET)\s*=\s*(?:"([^"]+)"|'([^']+)')"""),
)


def test_every_secret_shown_in_the_repository_is_refused_by_serve() -> None:
    """A new example secret in a document or a test must join PUBLISHED_SECRETS."""
    root = Path(__file__).resolve().parents[2]
    files = [
        *root.glob("*.md"),
        *root.glob("*.toml"),
        *(p for d in ("docs", "docker", "tests", "bench", "bridge") for p in (root / d).rglob("*")),
    ]
    found: dict[str, str] = {}
    for path in files:
        if not path.is_file() or path.suffix in {".png", ".pyc"}:
            continue
        text = path.read_text(errors="replace")
        for pattern in _SECRET_LITERALS:
            for match in pattern.finditer(text):
                value = next(g for g in match.groups() if g)
                found.setdefault(value, str(path.relative_to(root)))
    assert "replace-with-64-hex-characters-from-python3-c-import-secrets-token_hex-32" in found
    for value, where in found.items():
        if len(value.encode()) < MIN_SECRET_BYTES:
            continue  # refused for its length already
        assert value.strip() in PUBLISHED_SECRETS, (where, value)


def test_secrets_never_in_repr() -> None:
    settings = Settings(secret="hunter2", database_url="postgresql://u:pw@h/db")
    assert "hunter2" not in repr(settings) and "pw@" not in repr(settings)


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TOPIC_PREFIX", "from-env")
    monkeypatch.setenv("BRIDGE_SHARE_GROUP", "g1")
    assert load_settings().topic_prefix == "from-env"
    assert load_settings(topic_prefix="from-flag").topic_prefix == "from-flag"
    assert load_settings().share_group == "g1"


@pytest.mark.parametrize("prefix", ["", "a/+/b", "a/#", "bad prefix", "/leading"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="topic_prefix"):
        load_settings(topic_prefix=prefix)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("86400", 86400), ("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "5x", "-1", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_previous_secrets_are_comma_separated_and_hidden() -> None:
    settings = Settings(secret="new", previous_secrets=" old-1 , old-2,")
    assert settings.previous_server_secrets() == [b"old-1", b"old-2"]
    assert "old-1" not in repr(settings)
    assert Settings().previous_server_secrets() == []


def test_device_topics_must_name_the_client_id() -> None:
    assert Settings(device_topics="d/{client_id}/+").device_topics == "d/{client_id}/+"
    with pytest.raises(ValueError, match="client_id"):
        Settings(device_topics="devices/#")


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00+01:00"])
def test_since_outside_the_calendar_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="outside the years"):
        parse_since(text)


def test_since_forms() -> None:
    assert parse_since("2026-11-26T04:00").isoformat() == "2026-11-26T04:00:00+00:00"
    assert parse_since("2026-11-26T04:00+02:00").isoformat() == "2026-11-26T02:00:00+00:00"
    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        parse_since("yesterday")


def test_durations_longer_than_a_stored_window_are_refused() -> None:
    assert parse_duration("24855d") == 24855 * 86400  # just under 2**31 seconds
    with pytest.raises(argparse.ArgumentTypeError, match="longer than"):
        parse_duration("99999999999d")
