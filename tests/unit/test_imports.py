"""Which module may import which driver or framework (ruff's TID251 says it per file
for all of them at once; this says it per library), and a pure core that loads none."""

from __future__ import annotations

import ast
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADAPTED = frozenset({"asyncpg", "aiomqtt", "paho", "fastapi", "starlette", "uvicorn"})

#: module path pattern -> the adapted libraries it may import (pyproject.toml's TID251
#: per-file-ignores name the same files).
ALLOWED: dict[str, frozenset[str]] = {
    "bridge/db/*": frozenset({"asyncpg"}),
    "bridge/mqtt.py": frozenset({"aiomqtt", "paho"}),
    "bridge/service.py": frozenset({"aiomqtt"}),
    "bridge/dynsec.py": frozenset({"aiomqtt"}),
    "bridge/web/*": frozenset({"fastapi", "starlette", "uvicorn"}),
}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & ADAPTED


def _allowed(relative: str) -> frozenset[str]:
    found = [libs for pattern, libs in ALLOWED.items() if fnmatch(relative, pattern)]
    return frozenset().union(*found)


def test_each_adapted_library_is_imported_only_by_its_adapters() -> None:
    wrong = {}
    for path in sorted((ROOT / "bridge").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        extra = _imported(path) - _allowed(relative)
        if extra:
            wrong[relative] = sorted(extra)
    assert wrong == {}


def test_the_rule_sees_an_import() -> None:
    # The check above cannot pass by reading nothing.
    assert _imported(ROOT / "bridge/db/pool.py") == {"asyncpg"}
    assert _imported(ROOT / "bridge/mqtt.py") == {"aiomqtt", "paho"}


@pytest.mark.parametrize(
    "module",
    [
        "bridge.provisioner",
        "bridge.transitions",
        "bridge.protocol",
        "bridge.codes",
        "bridge.text",
        "bridge.records",
        "bridge.identifiers",
        "bridge.keys",
        "bridge.errors",
    ],
)
def test_the_core_loads_no_driver_and_no_framework(module: str) -> None:
    # In a fresh interpreter: this one has loaded everything already.
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert {name.split(".")[0] for name in loaded} & ADAPTED == set()
