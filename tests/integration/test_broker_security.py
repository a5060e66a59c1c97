"""The shipped mosquitto.conf and mosquitto.acl on a real Mosquitto: ACL, TLS, device logins.

One broker for the module runs the repository's configuration, rendered the way the
embedded broker renders it (free ports, this test's topic prefix) plus a TLS listener
with certificates made here. The bridge talks to it over mqtts:// as user "bridge" and
manages device logins as the dynamic-security admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import asyncpg
import pytest
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from bridge import brokerconf, cli, mqtt, protocol
from bridge.admin import Admin
from bridge.config import MqttEndpoint, Settings
from bridge.dynsec import DynSec, disable_device_login
from tests.certs import make_tls_files
from tests.helpers import RunningBridge, activate, start_bridge
from tests.services import free_port, wait_for_port

MAC_A = "00:1A:2B:3C:4D:5E"
MAC_B = "00:1A:2B:3C:4D:5F"


@dataclass(frozen=True)
class SecureBroker:
    plain_port: int
    tls_port: int
    prefix: str
    ca_file: Path
    bridge_password: str
    admin_password: str

    def endpoint(self, username: str | None = None, password: str | None = None) -> MqttEndpoint:
        """An mqtts:// endpoint that trusts the test CA."""
        return MqttEndpoint(
            "127.0.0.1", self.tls_port, True, username, password, ca_file=str(self.ca_file)
        )


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    with _secure_broker() as broker:
        yield broker


@contextlib.contextmanager
def _secure_broker(*, anonymous_guard: bool = True) -> Iterator[SecureBroker]:
    """The shipped configuration on a real mosquitto; without ``anonymous_guard``, the
    dynamic-security file is what ``mosquitto_ctrl dynsec init`` (or an older bridge)
    writes: no group for clients without a login."""
    plugin = brokerconf.find_dynsec_plugin()
    assert plugin is not None, "mosquitto's dynamic-security plugin is not installed"
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    workdir = Path(tempfile.mkdtemp(prefix="bridge-test-secure-mqtt-"))
    broker = SecureBroker(
        plain_port=free_port(),
        tls_port=free_port(),
        prefix=f"sec-{secrets.token_hex(4)}/provision",
        ca_file=make_tls_files(workdir / "tls").ca,
        bridge_password=secrets.token_urlsafe(16),
        admin_password=secrets.token_urlsafe(16),
    )
    brokerconf.write_private(
        workdir / "passwd", brokerconf.password_line("bridge", broker.bridge_password) + "\n"
    )
    dynsec = brokerconf.dynsec_config("bridge-admin", broker.admin_password, prefix=broker.prefix)
    if not anonymous_guard:
        del dynsec["anonymousGroup"], dynsec["groups"]
        dynsec["roles"] = [r for r in dynsec["roles"] if r["rolename"] == "bridge-admin"]
    brokerconf.write_private(workdir / "dynamic-security.json", json.dumps(dynsec))
    acl = brokerconf.shipped("mosquitto.acl").read_text()
    (workdir / "mosquitto.acl").write_text(brokerconf.render_acl(acl, broker.prefix))
    conf = brokerconf.render_conf(
        brokerconf.shipped("mosquitto.conf").read_text(),
        plain_port=broker.plain_port,
        tls_port=broker.tls_port,
        bind="127.0.0.1",
        plugin=plugin,
        run_as=pwd.getpwuid(os.geteuid()).pw_name,
    ).replace("persistence true", "persistence false")
    (workdir / "mosquitto.conf").write_text(conf)
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", "mosquitto.conf"], cwd=workdir, stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", broker.tls_port, proc, "mosquitto (TLS listener)")
        yield broker
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def secure_settings(settings: Settings, secure_broker: SecureBroker) -> Settings:
    """The bridge's settings: mqtts:// as user bridge, device logins on."""
    url = f"mqtts://bridge:{secure_broker.bridge_password}@127.0.0.1:{secure_broker.tls_port}"
    return settings.model_copy(
        update={
            "mqtt_url": SecretStr(url),
            "mqtt_ca_file": secure_broker.ca_file,
            "topic_prefix": secure_broker.prefix,
            "dynsec": True,
            "dynsec_username": "bridge-admin",
            "dynsec_password": SecretStr(secure_broker.admin_password),
        }
    )


@pytest.fixture
def device_settings(secure_settings: Settings, secure_broker: SecureBroker) -> Settings:
    """What a device uses: mqtts:// without a login."""
    url = f"mqtts://127.0.0.1:{secure_broker.tls_port}"
    return secure_settings.model_copy(update={"mqtt_url": SecretStr(url)})


@pytest.fixture
async def secure_bridge(secure_settings: Settings) -> AsyncIterator[RunningBridge]:
    running = await start_bridge(secure_settings)
    yield running
    await running.halt()


async def _two_claimed(admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.approve("acme", "thermo-1", [MAC_A, MAC_B])
    for mac in (MAC_A, MAC_B):
        await admin.claim("acme", "thermo-1", mac, owner="alice")


async def _collect(client: aiomqtt.Client, into: list[aiomqtt.Message]) -> None:
    async for message in client.messages:
        into.append(message)


def _granted(result: tuple[int, ...] | list[ReasonCode]) -> list[bool]:
    """Per topic of a SUBACK: granted (a QoS) or refused (a reason code of 0x80 or more)."""
    return [(code.value if isinstance(code, ReasonCode) else code) < 0x80 for code in result]


async def test_one_device_cannot_read_or_forge_another_devices_activation(
    admin: Admin,
    secure_broker: SecureBroker,
    device_settings: Settings,
    secure_bridge: RunningBridge,
) -> None:
    await _two_claimed(admin)
    prefix = secure_broker.prefix
    seen_by_b: list[aiomqtt.Message] = []
    seen_by_bridge_user: list[aiomqtt.Message] = []
    spy = mqtt.client(
        secure_broker.endpoint("bridge", secure_broker.bridge_password), "spy", persistent=False
    )
    b = mqtt.client(secure_broker.endpoint(), "dev-b", persistent=False)
    async with spy, b, asyncio.TaskGroup() as tg:
        await spy.subscribe(f"{prefix}/activate/+", qos=1)
        await b.subscribe(protocol.reply_topic(prefix, "dev-a"), qos=1)
        await b.subscribe(f"{prefix}/reply/#", qos=1)
        readers = [
            tg.create_task(_collect(b, seen_by_b)),
            tg.create_task(_collect(spy, seen_by_bridge_user)),
        ]
        await b.publish(protocol.activate_topic(prefix, "dev-a"), b"forged-by-b", qos=1)
        await b.publish(protocol.activate_topic(prefix, "dev-b"), b"own-of-b", qos=1)
        result = await activate(device_settings, MAC_A, client_id="dev-a")
        assert result.ok, result.reply
        await asyncio.sleep(0.5)
        for reader in readers:
            reader.cancel()
    payloads = [m.payload for m in seen_by_bridge_user]
    assert b"own-of-b" in payloads  # the bridge's user reads every activation topic
    assert b"forged-by-b" not in payloads  # ... but B could not write on A's
    topics_b = {m.topic.value for m in seen_by_b}
    assert protocol.reply_topic(prefix, "dev-a") not in topics_b  # A's key never reached B
    # B's `reply/#` delivers only B's own reply (to its malformed request).
    assert topics_b == {protocol.reply_topic(prefix, "dev-b")}


async def test_tls_listener_needs_a_trusted_certificate(
    secure_broker: SecureBroker,
) -> None:
    untrusted = MqttEndpoint("127.0.0.1", secure_broker.tls_port, True, None, None)
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt.client(untrusted, "no-ca", persistent=False):
            pass
    async with mqtt.client(secure_broker.endpoint(), "with-ca", persistent=False):
        pass


async def test_an_issued_key_opens_the_broker_for_the_devices_own_topics_only(
    admin: Admin,
    secure_broker: SecureBroker,
    secure_settings: Settings,
    device_settings: Settings,
    secure_bridge: RunningBridge,
) -> None:
    await _two_claimed(admin)
    a = await activate(device_settings, MAC_A, client_id="dev-a", seal=True)
    b = await activate(device_settings, MAC_B, client_id="dev-b")
    assert a.ok and b.ok and a.key and b.key
    seen_by_a: list[aiomqtt.Message] = []
    seen_by_b: list[aiomqtt.Message] = []
    login_a = mqtt.client(secure_broker.endpoint("dev-a", a.key), "dev-a", persistent=False)
    login_b = mqtt.client(secure_broker.endpoint("dev-b", b.key), "dev-b", persistent=False)
    async with login_a, login_b, asyncio.TaskGroup() as tg:
        assert all(_granted(await login_a.subscribe("devices/dev-a/#", qos=1)))
        assert all(_granted(await login_b.subscribe("devices/dev-b/#", qos=1)))
        assert not any(_granted(await login_a.subscribe("devices/dev-b/#", qos=1)))
        readers = [
            tg.create_task(_collect(login_a, seen_by_a)),
            tg.create_task(_collect(login_b, seen_by_b)),
        ]
        await login_a.publish("devices/dev-a/temp", b"21.5", qos=1)
        await login_a.publish("devices/dev-b/temp", b"forged-by-a", qos=1)
        await asyncio.sleep(0.3)
        await login_b.publish("devices/dev-b/temp", b"19.0", qos=1)
        await asyncio.sleep(0.5)
        for reader in readers:
            reader.cancel()
    assert [m.payload for m in seen_by_a] == [b"21.5"]
    assert [m.payload for m in seen_by_b] == [b"19.0"]  # A's forgery never arrived

    # The key is bound to the device's client id, and a wrong key opens nothing.
    for endpoint, client_id in (
        (secure_broker.endpoint("dev-a", a.key), "someone-else"),
        (secure_broker.endpoint("dev-a", "0" * 40), "dev-a"),
    ):
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt.client(endpoint, client_id, persistent=False):
                pass

    admin_endpoint = secure_broker.endpoint("bridge-admin", secure_broker.admin_password)
    async with DynSec(admin_endpoint, client_id="test-dynsec") as dynsec:
        await dynsec.disable_device("dev-a")  # what revoke and release call
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt.client(
                secure_broker.endpoint("dev-a", a.key), "dev-a", persistent=False
            ):
                pass
        async with mqtt.client(secure_broker.endpoint("dev-b", b.key), "dev-b", persistent=False):
            pass  # B is untouched
        # A new activation (after re-enable) replaces the password and enables the login.
        await dynsec.upsert_device("dev-a", "1" * 40)
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt.client(
                secure_broker.endpoint("dev-a", a.key), "dev-a", persistent=False
            ):
                pass
        async with mqtt.client(
            secure_broker.endpoint("dev-a", "1" * 40), "dev-a", persistent=False
        ):
            pass
        await dynsec.disable_device("never-activated")  # nothing to disable: no error
    # The one-call form revoke and release use, from the bridge's settings.
    assert await disable_device_login(secure_settings, "dev-b")
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt.client(secure_broker.endpoint("dev-b", b.key), "dev-b", persistent=False):
            pass


async def test_a_broker_that_refuses_the_login_change_does_not_cost_the_reply(
    admin: Admin, secure_broker: SecureBroker, secure_settings: Settings, device_settings: Settings
) -> None:
    await _two_claimed(admin)
    wrong_admin = secure_settings.model_copy(update={"dynsec_password": SecretStr("wrong")})
    running = await start_bridge(wrong_admin)
    try:
        result = await activate(device_settings, MAC_A, client_id="dev-x")
    finally:
        await running.halt()
    assert result.ok and result.key  # the reply came; the failure was logged
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt.client(
            secure_broker.endpoint("dev-x", result.key), "dev-x", persistent=False
        ):
            pass


def test_rendered_acl_keeps_the_shipped_rules() -> None:
    shipped = brokerconf.shipped("mosquitto.acl").read_text()
    assert "pattern write provision/activate/%c" in shipped
    assert "pattern read provision/reply/%c" in shipped
    rendered = brokerconf.render_acl(shipped, "x/provision")
    assert "pattern read x/provision/reply/%c" in rendered
    assert "topic write x/provision/reply/+" in rendered
    assert json.loads(json.dumps(brokerconf.dynsec_config("u", "p")))["clients"][0]["username"]


async def test_the_reference_client_activates_over_mqtts_with_a_ca_file(
    admin: Admin,
    secure_broker: SecureBroker,
    secure_bridge: RunningBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await _two_claimed(admin)
    argv = [
        "activate",
        "--mqtt-url",
        f"mqtts://127.0.0.1:{secure_broker.tls_port}",
        "--mqtt-ca-file",
        str(secure_broker.ca_file),
        "--topic-prefix",
        secure_broker.prefix,
        "--vendor",
        "acme",
        "--model",
        "thermo-1",
        "--identifier",
        MAC_A,
        "--seal",
    ]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert capsys.readouterr().out.startswith("ok: acme/thermo-1 001A2B3C4D5E")


async def test_a_new_activation_from_another_client_closes_the_old_login(
    admin: Admin,
    secure_broker: SecureBroker,
    device_settings: Settings,
    secure_bridge: RunningBridge,
    database_url: str,
) -> None:
    await _two_claimed(admin)
    first = await activate(device_settings, MAC_A, client_id="dev-r1")
    assert first.ok and first.key
    # What re-enable does to the row: an open window for a new activation.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE devices SET state = 'claimed', window_ends_at = now() + interval '1 hour'"
            " WHERE identifier = '001A2B3C4D5E'"
        )
    finally:
        await conn.close()
    second = await activate(device_settings, MAC_A, client_id="dev-r2")
    assert second.ok and second.key and second.key != first.key
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt.client(
            secure_broker.endpoint("dev-r1", first.key), "dev-r1", persistent=False
        ):
            pass
    async with mqtt.client(
        secure_broker.endpoint("dev-r2", second.key), "dev-r2", persistent=False
    ):
        pass
    model = await admin.model("acme", "thermo-1")
    assert await admin.store.login_of(model, "001A2B3C4D5E") == "dev-r2"


async def test_a_broker_without_the_plugin_costs_one_timeout_not_one_per_activation(
    admin: Admin, settings: Settings
) -> None:
    """BRIDGE_DYNSEC on a broker that has no plugin: nobody answers on $CONTROL."""
    await admin.add_model("acme", "thermo-1", kind="mac", claim_required=False)
    macs = [f"02:00:00:00:00:{n:02X}" for n in range(4)]
    await admin.approve("acme", "thermo-1", macs)
    running = await start_bridge(settings.model_copy(update={"dynsec": True}))
    try:
        started = time.monotonic()
        first = await activate(settings, macs[0], timeout=15)
        first_took = time.monotonic() - started
        started = time.monotonic()
        rest = await asyncio.gather(*(activate(settings, mac) for mac in macs[1:]))
        rest_took = time.monotonic() - started
    finally:
        await running.halt()
    assert first.ok and all(r.ok for r in rest)
    assert 4 < first_took < 10  # waited out the 5 s timeout once
    assert rest_took < 2  # then failed fast during the cool-down


async def test_revoke_and_release_close_the_devices_broker_login(
    secure_settings: Settings,
    secure_broker: SecureBroker,
    device_settings: Settings,
    secure_bridge: RunningBridge,
) -> None:
    async with Admin.connect(secure_settings, actor="test") as admin:
        await _two_claimed(admin)
        a = await activate(device_settings, MAC_A, client_id="rv-a")
        b = await activate(device_settings, MAC_B, client_id="rv-b")
        assert a.ok and b.ok and a.key and b.key
        for client_id, key in (("rv-a", a.key), ("rv-b", b.key)):
            async with mqtt.client(
                secure_broker.endpoint(client_id, key), client_id, persistent=False
            ):
                pass  # both keys open the broker
        await admin.revoke("acme", "thermo-1", MAC_A)
        await admin.release("acme", "thermo-1", MAC_B, owner="alice")
    for client_id, key in (("rv-a", a.key), ("rv-b", b.key)):
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt.client(
                secure_broker.endpoint(client_id, key), client_id, persistent=False
            ):
                pass


async def test_attack_anonymous_client_cannot_join_the_bridges_share_group(
    admin: Admin,
    secure_broker: SecureBroker,
    secure_settings: Settings,
    device_settings: Settings,
) -> None:
    """A stranger in the share group would be handed a share of the requests and the ACL
    would then withhold them from it: those devices would never get an answer."""
    await admin.add_model("acme", "thermo-1", kind="mac")
    macs = [f"00:1A:2B:3C:4E:{n:02X}" for n in range(6)]
    await admin.approve("acme", "thermo-1", macs)
    for mac in macs:
        await admin.claim("acme", "thermo-1", mac, owner="alice")
    shared = secure_settings.model_copy(update={"share_group": "bridges"})
    group = shared.subscription_group()
    assert group is not None and group.startswith("bridges-")
    prefix = secure_broker.prefix
    running = await start_bridge(shared)
    try:
        async with mqtt.client(secure_broker.endpoint(), "black-hole", persistent=True) as hole:
            # The configured name, the real (derived) one, and any other share group.
            refused = await hole.subscribe(
                [
                    (f"$share/bridges/{prefix}/activate/+", 1),
                    (f"$share/{group}/{prefix}/activate/+", 1),
                    (f"$share/other/{prefix}/activate/+", 1),
                    (f"{prefix}/activate/+", 1),
                ]
            )
            assert not any(_granted(refused))
            results = await asyncio.gather(
                *(activate(device_settings, mac, client_id=f"sh-{n}") for n, mac in enumerate(macs))
            )
    finally:
        await running.halt()
    assert all(r.ok for r in results), [r.reply for r in results]


async def test_attack_retained_activation_requests_are_refused_by_the_shipped_broker(
    secure_broker: SecureBroker,
) -> None:
    prefix = secure_broker.prefix
    topic = protocol.activate_topic(prefix, "hoarder")

    async def hoard() -> None:
        async with mqtt.client(secure_broker.endpoint(), "hoarder", persistent=False) as c:
            await c.publish(topic, b"x" * 60_000, qos=1, retain=True)
            await asyncio.sleep(1.0)  # the broker drops the connection
            await c.publish(topic, b"again", qos=1)

    with pytest.raises(aiomqtt.MqttError):
        await hoard()
    # Nothing was kept: a new subscriber of that topic (the bridge's user) gets nothing.
    got: list[aiomqtt.Message] = []
    bridge_user = secure_broker.endpoint("bridge", secure_broker.bridge_password)
    async with mqtt.client(bridge_user, "retain-check", persistent=False) as reader:
        await reader.subscribe(f"{prefix}/activate/+", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await _collect(reader, got)
    assert got == []


def test_the_share_group_name_is_derived_from_the_server_secret(settings: Settings) -> None:
    one = settings.model_copy(update={"share_group": "bridges"})
    other = one.model_copy(update={"secret": SecretStr(secrets.token_urlsafe(32))})
    assert one.subscription_group() == one.model_copy().subscription_group()
    assert one.subscription_group() != other.subscription_group()
    assert settings.subscription_group() is None
    assert protocol.subscription("p", one.subscription_group()).startswith("$share/bridges-")


async def test_attack_share_group_on_a_broker_whose_dynsec_file_predates_the_guard(
    secure_settings: Settings,
) -> None:
    """An operator's broker set up with `mosquitto_ctrl dynsec init`: the bridge puts the
    guard in force when its admin connection opens."""
    with _secure_broker(anonymous_guard=False) as old:
        url = f"mqtts://bridge:{old.bridge_password}@127.0.0.1:{old.tls_port}"
        settings = secure_settings.model_copy(
            update={
                "mqtt_url": SecretStr(url),
                "mqtt_ca_file": old.ca_file,
                "topic_prefix": old.prefix,
                "dynsec_password": SecretStr(old.admin_password),
                "share_group": "bridges",
            }
        )
        topic = f"$share/bridges/{old.prefix}/activate/+"
        async with mqtt.client(old.endpoint(), "before", persistent=False) as before:
            assert all(_granted(await before.subscribe(topic, qos=1)))  # the hole
        running = await start_bridge(settings)
        try:
            # The guard goes in force when the admin connection opens, beside serving;
            # putting it in force disconnects the clients without a login once.
            granted: list[bool] = [True]
            deadline = asyncio.get_running_loop().time() + 15
            while any(granted) and asyncio.get_running_loop().time() < deadline:
                with contextlib.suppress(aiomqtt.MqttError):
                    async with mqtt.client(old.endpoint(), "after", persistent=False) as after:
                        granted = _granted(await after.subscribe(topic, qos=1, timeout=2))
                await asyncio.sleep(0.2)
            assert not any(granted)
        finally:
            await running.halt()
