"""Broker logins for activated devices, through Mosquitto's dynamic-security plugin.

After an activation commits, the bridge gives the device a broker login: username and
MQTT client id = the device's client id, password = the key it was just issued, and a
role of its own that allows only its data topics (``devices/<client id>/#`` by
default). Revoke, release and transfer disable the login; a later activation (after
re-enable) enables it again with the new key, so the old key stops opening the broker.

It changes no login but device logins: the ones it creates carry a textName and a
``device:<client id>`` role (:mod:`bridge.logins`), and a login that exists without
them (an operator's) is never given a password, enabled or disabled.

The bridge speaks to the plugin as its admin user, on ``$CONTROL/dynamic-security/v1``,
over one connection opened on first use and reopened after a failure. Commands of one
call travel in one message and are answered in one message; calls are serialized. After
a failure (no answer, connection refused) calls fail at once for a cool-down, so a broken
plugin costs activations their broker login (logged), never their reply or a long wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import aiomqtt

from bridge import brokerconf, mqtt
from bridge.brokerconf import DEFAULT_ACL_ACCESS
from bridge.config import MqttEndpoint, Settings
from bridge.embedded import admin_endpoint
from bridge.errors import BrokerAdminError
from bridge.logins import DEVICE_TEXT_NAME, LoginNamespace, is_device_login, role_name

log = logging.getLogger("bridge.dynsec")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

#: Answers that mean "this is already as we want it" when creating idempotently.
_ALREADY = {
    "createRole": "Role already exists",
    "createClient": "Client already exists",
}
#: Clients per ``listClients`` page: a verbose page of device logins is about 150 kB.
_PAGE = 1000

#: Answers to the anonymous guard's commands that mean "already in force".
_GUARD_ALREADY = frozenset(
    {
        "Role already exists",
        "Group already exists",
        "Group is already in this role",
        "ACL with this topic already exists",
    }
)

__all__ = ["DynSec", "disable_device_login", "disable_device_logins", "role_name"]


class DynSec:
    """Creates, updates and disables device logins in the broker, and no other login.

    With a :class:`LoginNamespace`, :meth:`refresh` teaches it the broker's operator
    logins (and deletes device-made logins that carry an operator's name).
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        client_id: str,
        topics: str = "devices/{client_id}/#",
        timeout: float = 5.0,
        cooldown: float = 30.0,
        namespace: LoginNamespace | None = None,
        guard_prefix: str | None = None,
    ) -> None:
        self._endpoint = endpoint
        # The topic prefix of the anonymous guard to put in force on connecting (serve
        # does; one-shot commands such as revoke leave the broker's groups alone).
        self._guard_prefix = guard_prefix
        self._client_id = client_id
        self._topics = topics
        self._timeout = timeout
        self._cooldown = cooldown
        self._namespace = namespace
        self._down_until = 0.0  # after a failure, fail fast until then
        self._lock = asyncio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: aiomqtt.Client | None = None

    def __repr__(self) -> str:
        return f"DynSec({self._endpoint!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await stack.aclose()

    async def upsert_device(self, client_id: str, key: str) -> None:
        """Create or update the device's login: password = ``key``, enabled, own role.

        Never touches a login that is not a device login: an operator's name is
        refused before the broker is asked, and a login found to exist already is
        changed only when it carries the device marks (:func:`is_device_login`).
        A new login costs one round trip, as before; only a re-activation costs two.
        """
        if self._namespace is not None and self._namespace.is_operator(client_id):
            raise self._untouched(client_id)
        role = role_name(client_id)
        topic = self._topics.format(client_id=client_id)
        # Its own topics allowed, everything else denied here (lower priority), so a
        # device with a login is judged by its role alone, never by mosquitto.acl.
        kinds = ("publishClientSend", "publishClientReceive", "subscribePattern")
        acls = [{"acltype": k, "topic": topic, "priority": 1, "allow": True} for k in kinds]
        acls += [{"acltype": k, "topic": "#", "priority": 0, "allow": False} for k in kinds]
        acls.append({"acltype": "unsubscribePattern", "topic": "#", "priority": 0, "allow": True})
        responses = await self._run(
            [
                {"command": "createRole", "rolename": role, "acls": acls},
                {
                    "command": "createClient",
                    "username": client_id,
                    "clientid": client_id,
                    "password": key,
                    "textName": DEVICE_TEXT_NAME,
                    "roles": [{"rolename": role}],
                },
            ]
        )
        if responses[1].get("error"):  # it existed: a re-activation, or not a device's
            existing = await self._get_client(client_id)
            if existing is None or not is_device_login(existing):
                if self._namespace is not None:
                    self._namespace.learn_one(client_id)
                raise self._untouched(client_id)
            # The plugin rewrites its whole file after every change (its cost grows with
            # the logins: docs/performance.md): no enableClient for a login already enabled.
            commands = [{"command": "setClientPassword", "username": client_id, "password": key}]
            if existing.get("disabled"):
                commands.append({"command": "enableClient", "username": client_id})
            await self._run(commands)
        log.info("device login set", extra={"event": "dynsec_upsert", "client_id": client_id})

    async def disable_device(self, client_id: str) -> None:
        """Disable the device's login (it is also disconnected); no login is no error.

        A login that is not a device login is left alone (and that is logged): a device
        row may name one that an activation took before logins were kept apart.
        """
        existing = await self._get_client(client_id)
        if existing is not None and not is_device_login(existing):
            log.error(
                "not disabling the broker login %r: it is not a device login",
                client_id,
                extra={"event": "dynsec_not_a_device", "client_id": client_id},
            )
            return
        if existing is not None:
            await self._run([{"command": "disableClient", "username": client_id}])
        log.info(
            "device login disabled",
            extra={
                "event": "dynsec_disable",
                "client_id": client_id,
                "existed": existing is not None,
            },
        )

    async def refresh(self) -> int:
        """Learn the broker's logins: the operators' go to the namespace, and a device
        login carrying an operator's name is deleted (a device made it before logins were
        kept apart, and it shadows that operator). Returns how many clients were read."""
        clients: list[dict[str, Any]] = []
        while True:
            # One page per call, so activations waiting on the connection interleave.
            page_of = {"verbose": True, "count": _PAGE, "offset": len(clients)}
            (response,) = await self._run([{"command": "listClients", **page_of}])
            data = response.get("data")
            page = data.get("clients") if isinstance(data, dict) else None
            if not isinstance(page, list):
                break
            clients += [c for c in page if isinstance(c, dict)]
            if len(page) < _PAGE:
                break
        if self._namespace is None:
            return len(clients)
        self._namespace.learn(clients)
        for client in clients:
            name = client.get("username")
            if (
                isinstance(name, str)
                and is_device_login(client)
                and self._namespace.is_fixed_operator(name)
            ):
                await self._run(
                    [
                        {"command": "deleteClient", "username": name},
                        {"command": "deleteRole", "rolename": role_name(name)},
                    ],
                    tolerate={"Client not found", "Role not found"},
                )
                log.warning(
                    "deleted the broker login %r: a device created it under an operator's "
                    "name, which it shadowed",
                    name,
                    extra={"event": "dynsec_repaired", "client_id": name},
                )
        return len(clients)

    async def keep_learning(self, stop: asyncio.Event, every: float = 60.0) -> None:
        """:meth:`refresh` now and every ``every`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                count = await self.refresh()
                log.debug("broker logins read", extra={"event": "dynsec_refresh", "count": count})
            except BrokerAdminError as exc:
                # A refused admin login may be one a device took before logins were kept
                # apart: the README says how to give it its password back.
                log.warning(
                    "the broker's logins could not be read: %s; if the broker refuses the "
                    "admin login %r, see 'Repair of brokers attacked before this check' in "
                    "the README",
                    exc.message,
                    self._endpoint.username,
                    extra={"event": "dynsec_refresh_failed"},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def _get_client(self, username: str) -> dict[str, Any] | None:
        (response,) = await self._run(
            [{"command": "getClient", "username": username}], tolerate={"Client not found"}
        )
        data = response.get("data")
        client = data.get("client") if isinstance(data, dict) else None
        return client if isinstance(client, dict) else None

    @staticmethod
    def _untouched(client_id: str) -> BrokerAdminError:
        log.error(
            "the broker login %r is not a device login; left untouched",
            client_id,
            extra={"event": "dynsec_not_a_device", "client_id": client_id},
        )
        return BrokerAdminError(
            f"The broker login {client_id!r} is an operator's, not a device login; "
            "it was left untouched."
        )

    async def _run(
        self, commands: list[dict[str, Any]], tolerate: set[str] | None = None
    ) -> list[dict[str, Any]]:
        async with self._lock:
            # While the broker is known to be failing, do not make every activation wait
            # out a timeout in turn: fail at once (the caller logs it) and retry later.
            wait = self._down_until - time.monotonic()
            if wait > 0:
                raise BrokerAdminError(
                    "The broker's dynamic-security plugin failed recently; "
                    f"not trying again for {wait:.0f} s."
                )
            try:
                async with asyncio.timeout(self._timeout):
                    client = await self._connected()
                    responses = await self._exchange(client, commands)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                await self.close()  # reconnect on the next call
                self._down_until = time.monotonic() + self._cooldown
                raise BrokerAdminError(
                    f"The broker's dynamic-security plugin did not answer ({exc or 'timeout'})."
                ) from exc
        for command, response in zip(commands, responses, strict=True):
            error = response.get("error")
            if not error or error == _ALREADY.get(command["command"]):
                continue
            if tolerate and error in tolerate:
                continue
            raise BrokerAdminError(
                f"The broker refused {command['command']} for {command.get('username')!r}: {error}."
            )
        return responses

    async def _connected(self) -> aiomqtt.Client:
        if self._client is not None:
            return self._client
        # The stack closes the connection on any failure or cancellation before the
        # client is ready; once it is, pop_all() hands the connection to self._stack.
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                mqtt.client(self._endpoint, self._client_id, persistent=False)
            )
            await client.subscribe(RESPONSE_TOPIC, qos=1)
            await self._enforce_defaults(client)
            self._stack = stack.pop_all()
        self._client = client
        return client

    async def _enforce_defaults(self, client: aiomqtt.Client) -> None:
        # The plugin's default access decides for devices without a login before
        # mosquitto.acl does: anything but "deny" there would let them read every reply.
        acls = [{"acltype": kind, "allow": allow} for kind, allow in DEFAULT_ACL_ACCESS.items()]
        (response,) = await self._exchange(
            client, [{"command": "setDefaultACLAccess", "acls": acls}]
        )
        if response.get("error"):
            raise BrokerAdminError(f"The broker refused setDefaultACLAccess: {response['error']}.")
        if self._guard_prefix is not None:
            await self._enforce_anonymous_guard(client, self._guard_prefix)

    async def _enforce_anonymous_guard(self, client: aiomqtt.Client, prefix: str) -> None:
        # A dynamic-security file made before the guard existed (or by `mosquitto_ctrl
        # dynsec init`) lets clients without a login join the bridges' share group:
        # put the guard in force. Only what is missing is sent: the plugin disconnects
        # every client of a group whose role changes, i.e. every device mid-activation.
        present = await self._exchange(
            client,
            [
                {"command": "getAnonymousGroup"},
                {"command": "getRole", "rolename": brokerconf.ANONYMOUS_GROUP},
            ],
        )
        group = present[0].get("data", {}).get("group", {}).get("groupname")
        role = present[1].get("data", {}).get("role", {})
        have = {
            (a.get("acltype"), a.get("topic"), a.get("allow"))
            for a in role.get("acls", [])
            if isinstance(a, dict)
        }
        guard = brokerconf.anonymous_guard_commands(prefix)
        missing = [
            c
            for c in guard
            if c["command"] == "addRoleACL" and (c["acltype"], c["topic"], c["allow"]) not in have
        ]
        if group == brokerconf.ANONYMOUS_GROUP and not missing:
            return
        commands = [c for c in guard if c["command"] != "addRoleACL" or c in missing]
        responses = await self._exchange(client, commands)
        failed = [
            f"{c['command']}: {r['error']}"
            for c, r in zip(commands, responses, strict=True)
            if r.get("error") and r["error"] not in _GUARD_ALREADY
        ]
        if failed:
            raise BrokerAdminError(
                "The broker refused the guard of clients without a login ("
                + "; ".join(failed)
                + "); they could join the bridges' share group."
            )
        log.warning(
            "clients without a login could join the bridges' share group; guard put in force",
            extra={"event": "dynsec_guard", "prefix": prefix},
        )

    async def _exchange(
        self, client: aiomqtt.Client, commands: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        tag = secrets.token_hex(8)
        for n, command in enumerate(commands):
            command["correlationData"] = f"{tag}:{n}"
        await client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}).encode(), qos=1)
        return await self._responses(client, tag)

    async def _responses(self, client: aiomqtt.Client, tag: str) -> list[dict[str, Any]]:
        async for message in client.messages:
            if not isinstance(message.payload, bytes):
                continue
            try:
                body = json.loads(message.payload)
            except ValueError:
                continue
            responses = body.get("responses") if isinstance(body, dict) else None
            if not isinstance(responses, list) or not responses:
                continue
            first = responses[0]
            if isinstance(first, dict) and str(first.get("correlationData", "")).startswith(
                f"{tag}:"
            ):
                return [r if isinstance(r, dict) else {} for r in responses]
            # An answer to a call that timed out earlier: not ours, skip it.
        raise aiomqtt.MqttError("the broker closed the connection")


async def disable_device_login(settings: Settings, client_id: str | None) -> bool:
    """Disable a device's broker login, if devices get logins; what revoke, release and
    transfer call (through :class:`bridge.admin.Admin`).

    Call it after the database commit, with the client id the device activated from.
    Returns whether a broker was told; raises :class:`BrokerAdminError` when it could
    not be.
    """
    return await disable_device_logins(settings, [] if client_id is None else [client_id])


async def disable_device_logins(settings: Settings, client_ids: Iterable[str]) -> bool:
    """:func:`disable_device_login` for several devices, over one admin connection."""
    endpoint = admin_endpoint(settings)
    wanted = list(dict.fromkeys(client_ids))
    if endpoint is None or not wanted:
        return False
    name = f"{settings.mqtt_client_id}-admin-{secrets.token_hex(3)}"[:128]
    async with DynSec(endpoint, client_id=name, topics=settings.device_topics) as dynsec:
        for client_id in wanted:
            await dynsec.disable_device(client_id)
    return True
