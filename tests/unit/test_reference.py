"""The README's configuration table is the settings model's, not a hand-written copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import reference
from bridge.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_table_is_generated() -> None:
    text = README.read_text()
    assert reference.splice(text) == text, (
        "README.md's configuration table is out of date; "
        "run `python -m bridge.reference --write README.md`"
    )


def test_every_setting_is_in_the_table_with_its_description() -> None:
    table = reference.table()
    for name, field in Settings.model_fields.items():
        assert f"`BRIDGE_{name.upper()}`" in table
        assert field.description, f"{name} needs a description: it is the README's meaning"
        assert reference._cell(field.description) in table


def test_flags_come_from_the_command_line() -> None:
    found = reference.flags()
    assert found["metrics_addr"] == "--metrics-addr"
    assert found["database_url"] == "--database-url"
    assert "secret" not in found  # a secret must never be a flag (it would show in ps)


def test_drift_is_detected() -> None:
    doc = f"intro\n{reference.START}\n| stale |\n{reference.END}\noutro\n"
    fixed = reference.splice(doc)
    assert fixed != doc
    assert fixed.startswith("intro\n") and fixed.endswith("\noutro\n")
    assert reference.splice(fixed) == fixed
    with pytest.raises(ValueError, match="markers"):
        reference.splice("no markers here")


def test_check_command_exit_status(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"{reference.START}\nold\n{reference.END}\n")
    assert reference.main(["--check", str(stale)]) == 1
    assert reference.main(["--write", str(stale)]) == 0
    assert reference.main(["--check", str(stale)]) == 0
