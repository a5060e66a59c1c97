"""How Store.open reads a DSN: one DSN per host of a multi-host DSN, the pgbouncer flag."""

from __future__ import annotations

import pytest

from bridge.db.pool import _one_dsn_per_host, _pooler_options
from bridge.errors import ConfigError


def test_a_multi_host_dsn_becomes_one_dsn_per_host_with_everything_else_kept() -> None:
    dsn = "postgresql://bridge:p%40ss@db1:5432,db2:5433,[::1]:5434/bridge?target_session_attrs=read-write"
    assert _one_dsn_per_host(dsn) == [
        "postgresql://bridge:p%40ss@db1:5432/bridge?target_session_attrs=read-write",
        "postgresql://bridge:p%40ss@db2:5433/bridge?target_session_attrs=read-write",
        "postgresql://bridge:p%40ss@[::1]:5434/bridge?target_session_attrs=read-write",
    ]


@pytest.mark.parametrize(
    "dsn", ["postgresql://bridge@db1:5432/bridge", "postgresql:///bridge?host=/run/postgresql"]
)
def test_a_single_host_dsn_is_left_alone(dsn: str) -> None:
    assert _one_dsn_per_host(dsn) == [dsn]


def test_pgbouncer_true_turns_the_statement_cache_off_and_leaves_the_dsn() -> None:
    dsn, cache = _pooler_options("postgresql://u@h:6432/db?sslmode=disable&pgbouncer=true")
    assert (dsn, cache) == ("postgresql://u@h:6432/db?sslmode=disable", 0)


@pytest.mark.parametrize("flag", ["", "?pgbouncer=false", "?pgbouncer=0"])
def test_without_pgbouncer_the_cache_stays(flag: str) -> None:
    dsn, cache = _pooler_options(f"postgresql://u@h/db{flag}")
    assert dsn == "postgresql://u@h/db" and cache > 0


def test_a_pgbouncer_value_that_is_not_a_boolean_is_refused() -> None:
    with pytest.raises(ConfigError, match="pgbouncer parameter must be true or false"):
        _pooler_options("postgresql://u@h/db?pgbouncer=maybe")
