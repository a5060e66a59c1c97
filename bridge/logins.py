"""The broker login namespace: which logins a device may own, and which are the operators'.

A device's MQTT client id is also the username of the broker login it gets when it
activates, so a client id is a claim on a login. A device may own exactly one login, its
own device login; every other name belongs to someone else:

- the bridge's own broker user, the dynamic-security admin, the users of the embedded
  broker's password file, and anything the operator lists in ``BRIDGE_RESERVED_LOGINS``;
- a few names no device should carry (:data:`RESERVED_NAMES`) and the bridge's own
  MQTT client ids;
- any dynamic-security client that is not a device login: what an operator created by
  hand, learned from the plugin with ``listClients`` (:meth:`LoginNamespace.learn`).

Device logins are marked when the bridge creates them (:data:`DEVICE_TEXT_NAME` and the
role ``device:<client id>``), so they can be told from the operators' logins later.

The check is a set lookup in memory: it costs an activation nothing measurable and no
round trip. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

#: The textName the bridge gives every device login it creates.
DEVICE_TEXT_NAME: Final = "provisioning-bridge device login"

#: Names refused as client ids whatever the configuration: the embedded broker's operator
#: users, and the names an operator is most likely to give an account of their own.
RESERVED_NAMES: Final = frozenset(
    {
        "bridge",
        "bridge-admin",
        "admin",
        "administrator",
        "root",
        "mosquitto",
        "superuser",
        "operator",
    }
)


def role_name(client_id: str) -> str:
    """The dynamic-security role of a device login: its own topics and nothing else."""
    return f"device:{client_id}"


def is_device_login(client: Mapping[str, Any]) -> bool:
    """Whether a dynamic-security client (as ``getClient``/``listClients`` show it) is a
    device login the bridge made: its own ``device:`` role, and the bridge's textName
    (or none at all, as the bridge made them before it set one)."""
    username = client.get("username")
    if not isinstance(username, str):
        return False
    roles = client.get("roles") if isinstance(client.get("roles"), list) else None
    names = {r.get("rolename") for r in roles if isinstance(r, dict)} if roles else set()
    text = client.get("textname", client.get("textName"))
    return role_name(username) in names and text in (None, "", DEVICE_TEXT_NAME)


def _fold(name: str) -> str:
    # Mosquitto compares usernames exactly, but other brokers and auth backends do not
    # always: refusing "Bridge" as well as "bridge" costs a device nothing.
    return name.casefold()


class LoginNamespace:
    """Answers, in memory, whether a client id may become a device's broker login."""

    def __init__(
        self,
        operator_logins: Iterable[str],
        *,
        bridge_client_id: str,
        workers_client_id: str | None = None,
    ) -> None:
        """``bridge_client_id``: the bridge's own MQTT client id; it and ``<id>-…`` (its
        dynamic-security connection, say) are refused. ``workers_client_id``: for a worker
        of ``serve --workers N``, the id every worker's is made from (``<id>-w<i>``): a
        device whose request reaches worker 1 must not get a broker login named after
        worker 0, with which it could take worker 0's session. Only the place that makes
        workers knows it: a single bridge whose id merely ends in ``-w1`` reserves no more
        than its own id.
        """
        self._fixed = frozenset(_fold(n) for n in (*RESERVED_NAMES, *operator_logins) if n)
        self._bridge = tuple(_fold(i) for i in (bridge_client_id, workers_client_id) if i)
        self._learned: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"LoginNamespace({len(self._fixed)} fixed, {len(self._learned)} learned)"

    def refusal(self, client_id: str) -> str | None:
        """One sentence when ``client_id`` names a login that is not a device's; else None."""
        folded = _fold(client_id)
        if self._is_bridges(folded):
            whose = "the bridge's own MQTT connections"
        elif folded in self._fixed:
            whose = "an operator's broker login"
        elif folded in self._learned:
            whose = "a broker login an operator created"
        else:
            return None
        return (
            f"The client id {client_id!r} is reserved for {whose}; "
            "give the device a client id of its own."
        )

    def is_operator(self, name: str) -> bool:
        """An operator's name, fixed or learned (the bridge's client ids included)."""
        return self.refusal(name) is not None

    def is_fixed_operator(self, name: str) -> bool:
        """A name that is an operator's by configuration, whatever the broker holds."""
        folded = _fold(name)
        return folded in self._fixed or self._is_bridges(folded)

    def _is_bridges(self, folded: str) -> bool:
        return any(folded == own or folded.startswith(own + "-") for own in self._bridge)

    def learn(self, clients: Iterable[Mapping[str, Any]]) -> None:
        """Replace the learned names by the non-device clients of a ``listClients`` answer."""
        self._learned = frozenset(
            _fold(c["username"])
            for c in clients
            if isinstance(c.get("username"), str) and not is_device_login(c)
        )

    def learn_one(self, name: str) -> None:
        """Add one operator login found by surprise (a race past :meth:`refusal`)."""
        self._learned = self._learned | {_fold(name)}
