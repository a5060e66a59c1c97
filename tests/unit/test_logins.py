"""The login namespace's rules: which client ids name someone else's broker login."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from bridge.config import Settings
from bridge.embedded import operator_logins
from bridge.logins import DEVICE_TEXT_NAME, LoginNamespace, is_device_login, role_name


def _namespace() -> LoginNamespace:
    return LoginNamespace(["mqtt-user", "ops-admin"], bridge_client_id="bridge-host1")


def test_operator_logins_reserved_names_and_the_bridges_client_ids_are_refused() -> None:
    namespace = _namespace()
    for name in (
        "mqtt-user",
        "ops-admin",
        "bridge",
        "bridge-admin",
        "Bridge-Admin",
        "root",
        "bridge-host1",
        "bridge-host1-dynsec",
        "bridge-host1-admin-a1b2c3",
    ):
        refusal = namespace.refusal(name)
        assert refusal is not None, name
        assert refusal.startswith(f"The client id {name!r} is reserved for ")
        assert refusal.endswith("give the device a client id of its own.")
    for name in ("thermo-1", "bridge-host10", "device-abc", "bridges"):
        assert namespace.refusal(name) is None, name


def test_learned_logins_are_the_non_device_clients_of_the_broker() -> None:
    namespace = _namespace()
    namespace.learn(
        [
            {"username": "grafana", "roles": []},
            {
                "username": "dev-1",
                "textname": DEVICE_TEXT_NAME,
                "roles": [{"rolename": "device:dev-1"}],
            },
            {"username": "dev-2", "roles": [{"rolename": "device:dev-2"}]},  # before textName
            {"username": "odd", "textname": "made by hand", "roles": [{"rolename": "device:odd"}]},
            {"username": "borrowed", "roles": [{"rolename": "device:someone-else"}]},
        ]
    )
    assert namespace.refusal("grafana") is not None
    assert namespace.refusal("odd") is not None
    assert namespace.refusal("borrowed") is not None
    assert namespace.refusal("dev-1") is None and namespace.refusal("dev-2") is None
    namespace.learn([])  # a refresh replaces what was learned
    assert namespace.refusal("grafana") is None
    namespace.learn_one("late")
    assert namespace.refusal("late") is not None
    assert not namespace.is_fixed_operator("late") and namespace.is_fixed_operator("bridge")


def test_device_login_marks() -> None:
    assert role_name("x") == "device:x"
    assert is_device_login({"username": "x", "roles": [{"rolename": "device:x"}]})
    assert not is_device_login({"username": "x", "roles": "device:x"})
    assert not is_device_login({"roles": [{"rolename": "device:x"}]})
    assert not is_device_login(
        {"username": "bridge-admin", "roles": [{"rolename": "bridge-admin"}]}
    )


@given(st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True))
def test_a_refusal_is_one_sentence_for_any_client_id(client_id: str) -> None:
    namespace = LoginNamespace([client_id], bridge_client_id="bridge-host1")
    refusal = namespace.refusal(client_id)
    assert refusal is not None and "\n" not in refusal and refusal.endswith(".")


def test_operator_logins_come_from_the_configuration_and_the_embedded_password_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "mosquitto").mkdir()
    (tmp_path / "mosquitto" / "passwd").write_text("bridge:$7$x\nnode-red:$7$y\n# note\n")
    embedded_names = operator_logins(Settings(state_dir=tmp_path, reserved_logins="a, b,,"))
    assert {"bridge", "bridge-admin", "node-red", "a", "b"} <= embedded_names
    configured = Settings(
        mqtt_url=SecretStr("mqtt://svc-user:pw@broker:1883"),
        dynsec=True,
        dynsec_username="ops-admin",
    )
    assert {"svc-user", "ops-admin"} <= operator_logins(configured)
