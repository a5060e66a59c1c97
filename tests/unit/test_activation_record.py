"""The activation's arguments are named, in one order, and match the SQL function's."""

from __future__ import annotations

import dataclasses
import re

from bridge.db.activations import _ACTIVATE_MANY, ACTIVATE_STATEMENT, statement_arguments
from bridge.db.schema import schemas_dir
from bridge.records import Activation, AuditTally

_PARAMETER = re.compile(r"^\s+p_(\w+)\s+\w+,?$", re.MULTILINE)


def _sql_parameters() -> list[str]:
    sql = (schemas_dir() / "functions" / "transitions" / "activate.sql").read_text()
    signature = sql[sql.index("CREATE FUNCTION bridge_activate(") : sql.index(") RETURNS")]
    return _PARAMETER.findall(signature)


def test_the_record_is_in_name_order() -> None:
    names = [f.name for f in dataclasses.fields(Activation)]
    assert names == sorted(names)


def test_every_field_is_a_parameter_of_bridge_activate_and_nothing_else_is() -> None:
    fields = {f.name for f in dataclasses.fields(Activation)}
    settings = {"tally_clients", "tally_window_seconds"}  # the store's, not the caller's
    assert set(_sql_parameters()) == fields | settings
    assert _sql_parameters() == sorted(_sql_parameters())


def test_statements_pass_every_argument_by_name() -> None:
    for name in [f.name for f in dataclasses.fields(Activation)]:
        assert f"p_{name} => $" in ACTIVATE_STATEMENT
        assert f"p_{name} => r.{name}" in _ACTIVATE_MANY
    activation = Activation(
        client_id="c",
        client_limit=1,
        device_logins=True,
        grace_seconds=2,
        identifier="i",
        identifier_limit=3,
        key_hash=b"h",
        key_id="k",
        model_id=4,
        model_limit=5,
        presented="p",
        reply=b"r",
        request_id="q",
        window_seconds=6,
    )
    arguments = statement_arguments(activation, AuditTally(window_seconds=7, clients=8))
    assert arguments == ("c", 1, True, 2, "i", 3, b"h", "k", None, 4, 5, "p", b"r", "q", 6, 8, 7)
    assert ACTIVATE_STATEMENT.count("$") == len(arguments)
