"""One frozen settings object, and the only reader of the environment.

Every setting has an environment variable (``BRIDGE_<NAME>``) and a command-line
flag that overrides it. Secrets are ``SecretStr`` so that no repr or log line
shows them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge import text
from bridge.errors import ConfigError

#: A secret any developer could read in this file: accepted only when asked for by name.
DEV_SECRET = "insecure-development-secret-do-not-use-in-production"  # noqa: S105 (public by design)

#: Every secret value shown anywhere in this repository (code, README, docs, docker files,
#: tests): anyone can read them, so `serve` refuses them as BRIDGE_SECRET unless --dev.
#: An example secret added to a document goes here too (tests/unit/test_config.py
#: looks for them and fails until it does).
PUBLISHED_SECRETS: frozenset[str] = frozenset(
    {
        DEV_SECRET,
        # docs/systemd/bridge.env.example
        "replace-with-64-hex-characters-from-python3-c-import-secrets-token_hex-32",
    }
)
#: The shortest BRIDGE_SECRET `serve` accepts (unless --dev): 256 bits.
MIN_SECRET_BYTES = 32
_HOW_TO_MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

_TOPIC_LEVEL = re.compile(f"[{text.PLAIN_CHARS}]+(/[{text.PLAIN_CHARS}]+)*")
_SHARE_GROUP = text.plain(text.SHARE_GROUP_MAX)
_LISTEN_ADDR = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([1-9][0-9]{0,4})")


def default_state_dir() -> Path:
    """Where the embedded database and broker keep their files."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "provisioning-bridge"


class Settings(BaseSettings):
    """Everything the bridge can be told. Field docs become the README's reference."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", frozen=True, extra="forbid")

    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (`postgresql://user:pass@host:port/db`). "
        "Unset: an embedded PostgreSQL under the state directory. Several hosts with "
        "`?target_session_attrs=read-write` follow a failover; add `pgbouncer=true` "
        "behind pgbouncer in transaction pooling mode (docs/ha.md).",
    )
    mqtt_url: SecretStr | None = Field(
        default=None,
        description="Broker URL (`mqtt://user:pass@host:port`, `mqtts://` for TLS). "
        "Unset: `serve` starts mosquitto from PATH on 127.0.0.1:1883, or an in-process "
        "amqtt broker (MQTT 3.1.1) when there is no mosquitto; clients use that.",
    )
    topic_prefix: str = Field(default="provision", description="First topic level(s).")
    secret: SecretStr | None = Field(
        default=None,
        description="Server secret for keyed hashing of keys and encrypting replay data and "
        "enrollment keys: at least 32 bytes, random, not a value shown in this repository. "
        "Required by `serve` unless `--dev`; never a flag (it would show in `ps`).",
    )
    previous_secrets: SecretStr | None = Field(
        default=None,
        description="Earlier server secrets, comma-separated: keys hashed and replies "
        "stored under them still verify and decrypt after BRIDGE_SECRET is rotated.",
    )
    dev: bool = Field(
        default=False,
        description="Development only: allow the well-known development secret when "
        "`BRIDGE_SECRET` is unset, and a short or published `BRIDGE_SECRET`.",
    )
    share_group: str | None = Field(
        default=None,
        description="Subscribe as `$share/<group>-<tag>/...` so several bridges share the "
        "load; `<tag>` is derived from `BRIDGE_SECRET`, so strangers cannot join the group.",
    )
    client_id: str | None = Field(
        default=None,
        description="The bridge's own MQTT client id; keep it stable across restarts "
        "(persistent session) and distinct per replica. Unset: `<tag>` is an HMAC of "
        "the host name under the server secret (with `--dev`: random, kept in the state "
        "directory), so nobody can guess the id and take the bridge's session.",
    )
    workers_client_id: str | None = Field(
        default=None,
        description="Set by `serve --workers N` for its workers, not by hand: the client id "
        "the workers' ids are made from (`<id>-w<i>`). Each worker refuses devices the "
        "client ids `<id>` and `<id>-…`, so that no device takes another worker's session.",
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Files of the embedded database and broker.",
    )
    grace_seconds: int = Field(
        default=600, ge=1, description="How long a reply is kept for an identical retry."
    )
    max_in_flight: int = Field(
        default=64, ge=1, le=10_000, description="Requests processed at once by one bridge."
    )
    db_pool_size: int = Field(
        default=10, ge=1, le=500, description="Database connections per bridge (pool maximum)."
    )
    reply_expiry_seconds: int = Field(
        default=600, ge=1, description="MQTT 5 Message Expiry of replies."
    )
    retry_after_seconds: int = Field(
        default=5, ge=1, description="`retry_after` sent with `unavailable`."
    )
    metrics_addr: str | None = Field(
        default=None,
        description="`host:port` of the HTTP listener for `/metrics` (Prometheus), `/healthz` and "
        "`/readyz`, e.g. `127.0.0.1:9108`. Unset: no listener.",
    )

    rate_limit_failures: int = Field(
        default=10,
        ge=1,
        description="Failed activations allowed per client id in one window; past it, "
        "every request of that client id gets `rate_limited` (an identical retry still "
        "gets its stored reply).",
    )
    rate_limit_window_seconds: int = Field(
        default=60, ge=1, description="The window over which failed activations are counted."
    )
    rate_limit_identifier_failures: int = Field(
        default=10,
        ge=1,
        description="Failed activations per identifier in one window, from all client ids; "
        "past it, a request that would fail gets `rate_limited` instead of its reason "
        "(one that would succeed still succeeds).",
    )
    rate_limit_model_failures: int = Field(
        default=100,
        ge=1,
        description="Failed activations per model in one window, from all client ids; past "
        "it, failures are answered `rate_limited` and logged once per window as guessing "
        "(metric `bridge_guessing_suspected_total`); successes are never refused.",
    )
    mqtt_ca_file: Path | None = Field(
        default=None,
        description="CA certificate(s) that sign the broker's TLS certificate (mqtts://). "
        "Unset: the system's trusted CAs.",
    )
    dynsec: bool = Field(
        default=False,
        description="Give each activated device a broker login (the Mosquitto "
        "dynamic-security plugin): username = client id, password = its key.",
    )
    dynsec_username: str | None = Field(
        default=None,
        description="Dynamic-security admin user. Unset: the MQTT URL's user.",
    )
    dynsec_password: SecretStr | None = Field(
        default=None,
        description="Password of the dynamic-security admin user. Unset: the MQTT URL's.",
    )
    device_topics: str = Field(
        default="devices/{client_id}/#",
        description="The topic filter a device's broker login may publish and subscribe to.",
    )
    api_host: str = Field(default="127.0.0.1", description="Address the HTTP API listens on.")
    api_port: int = Field(default=8080, ge=1, le=65535, description="Port of the HTTP API.")
    api_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=64 * 1_048_576,
        description="Largest HTTP request body the API reads (413 too_large above it).",
    )
    api_claim_failures: int = Field(
        default=10,
        ge=1,
        description="Failed claims one API token may make per throttle window (then 429).",
    )
    api_claim_window_seconds: int = Field(
        default=60, ge=1, description="The claim throttle window, from the first failure."
    )
    reserved_logins: str | None = Field(
        default=None,
        description="Broker logins of your own that no device may take as its client id, "
        "comma-separated (the bridge's and the dynamic-security admin's are always reserved).",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_plain(cls, value: str) -> str:
        if not _TOPIC_LEVEL.fullmatch(value):
            raise ValueError(f"must be topic levels of [{text.PLAIN_CHARS}] separated by '/'")
        return value

    @field_validator("metrics_addr")
    @classmethod
    def _addr_is_host_port(cls, value: str | None) -> str | None:
        if value and not _LISTEN_ADDR.fullmatch(value):
            raise ValueError("must be host:port, e.g. 127.0.0.1:9108 or [::1]:9108")
        return value or None

    @field_validator("share_group")
    @classmethod
    def _group_is_plain(cls, value: str | None) -> str | None:
        if value is not None and not _SHARE_GROUP.fullmatch(value):
            raise ValueError(
                f"must be 1..{text.SHARE_GROUP_MAX} characters of [{text.PLAIN_CHARS}]"
            )
        return value or None

    @field_validator("device_topics")
    @classmethod
    def _topics_name_the_device(cls, value: str) -> str:
        if "{client_id}" not in value or value.replace("{client_id}", "x").count("{"):
            raise ValueError("must contain {client_id} and no other placeholder")
        return value

    @property
    def reserved_login_names(self) -> list[str]:
        text = self.reserved_logins or ""
        return [name.strip() for name in text.split(",") if name.strip()]

    @property
    def mqtt_client_id(self) -> str:
        """The bridge's own MQTT client id: BRIDGE_CLIENT_ID, or one nobody can guess.

        Mosquitto hands a session to whoever connects with its client id, anonymous or
        not, so a guessable default (``bridge-<hostname>``) let anyone kick the bridge
        and take its queued requests. Unset, the id is an HMAC of the host name under the
        server secret: stable across restarts (the persistent session survives), distinct
        per host, unknown to anyone without the secret. With only the public development
        secret (``--dev``) that HMAC would be guessable, so a random id is made once and
        kept in the state directory instead.
        """
        if self.client_id:
            return self.client_id
        host = socket.gethostname()
        if self.secret is not None and self.secret.get_secret_value():
            tag = _name_tag(self.secret.get_secret_value().encode(), "client-id", host, 24)
        else:
            tag = _kept_client_tag(self.state_dir)
        return f"bridge-{host[:64]}-{tag}"

    def server_secret(self) -> bytes:
        """The secret for keyed hashing; refuses to invent one, or take a weak one, unless --dev."""
        if self.secret is not None and self.secret.get_secret_value():
            value = self.secret.get_secret_value()
            if not self.dev:
                _refuse_weak_secret(value)
            return value.encode()
        if self.dev:
            return DEV_SECRET.encode()
        raise ConfigError(
            "BRIDGE_SECRET is not set; set it to a long random string "
            f"(e.g. `{_HOW_TO_MAKE_ONE}`), "
            "or pass --dev to use the insecure development secret."
        )

    def previous_server_secrets(self) -> list[bytes]:
        """Earlier secrets still accepted for verification and replay (any order)."""
        if self.previous_secrets is None:
            return []
        text = self.previous_secrets.get_secret_value()
        return [part.strip().encode() for part in text.split(",") if part.strip()]

    def subscription_group(self) -> str | None:
        """The share group the bridges really subscribe with: ``<group>-<tag>``.

        The tag is derived from the server secret, which every replica shares, so the
        replicas meet in one group that nobody without the secret can name: a broker
        that does not refuse ``$share`` subscriptions to strangers (Mosquitto without
        the dynamic-security guard) still cannot be joined by guessing "bridges".
        """
        if self.share_group is None:
            return None
        tag = _name_tag(self.server_secret(), "share-group", self.share_group, 16)
        return f"{self.share_group}-{tag}"


def _name_tag(secret: bytes, purpose: str, name: str, length: int) -> str:
    """Hex characters only holders of ``secret`` can compute: the unguessable part of a
    broker-visible name (the bridge's client id, its share group)."""
    message = f"provisioning-bridge/v1 {purpose}\x00{name}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:length]


def _refuse_weak_secret(value: str) -> None:
    # Everything the bridge keeps (key hashes, stored replies, enrollment keys) is only as
    # safe as this secret: a guessable one turns a database dump into keys.
    if value.strip() in PUBLISHED_SECRETS:
        raise ConfigError(
            "BRIDGE_SECRET is a value published in this project's repository (the development "
            "secret or an example), so anyone can know it; make your own with "
            f"`{_HOW_TO_MAKE_ONE}` (or pass --dev for a development run)."
        )
    size = len(value.encode())
    if size < MIN_SECRET_BYTES:
        raise ConfigError(
            f"BRIDGE_SECRET is {size} bytes long; it must be at least {MIN_SECRET_BYTES} bytes "
            f"of random data, e.g. the output of `{_HOW_TO_MAKE_ONE}` "
            "(or pass --dev for a development run)."
        )


def _kept_client_tag(state_dir: Path) -> str:
    """A random client-id tag made once and kept (0600) in the state directory."""
    path = state_dir / "bridge-client-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError:
        return secrets.token_hex(12)  # unreadable: safe, though not stable across restarts
    tag = secrets.token_hex(12)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()  # another process made it first: use theirs
    except OSError:
        return tag  # no writable state directory: safe, though not stable across restarts
    with os.fdopen(fd, "w") as f:
        f.write(tag + "\n")
    return tag


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, apply command-line overrides, validate once."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"setting {where!r} is invalid: {first['msg']}") from exc


@dataclass(frozen=True)
class MqttEndpoint:
    """A parsed broker URL. ``repr`` hides the password."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    #: False for a broker known to speak only MQTT 3.1.1 (the embedded amqtt broker).
    mqtt5: bool = True
    ca_file: str | None = None  # CA bundle that signs the broker's certificate (mqtts)

    def __repr__(self) -> str:
        who = f"{self.username}:***@" if self.username else ""
        return f"MqttEndpoint({'mqtts' if self.tls else 'mqtt'}://{who}{self.host}:{self.port})"


EMBEDDED_MQTT_URL = "mqtt://127.0.0.1:1883"


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """Split mqtt://user:pass@host:port (mqtts:// for TLS) into its parts."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError("the MQTT URL must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ConfigError("the MQTT URL has no host name")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise ConfigError("the MQTT URL has an invalid port") from exc
    return MqttEndpoint(
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "mqtts",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
