"""bridge/db/ is the only package that imports asyncpg (its docstring says so)."""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[2] / "bridge"


def _imports_asyncpg(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            if any(alias.name.split(".")[0] == "asyncpg" for alias in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncpg":
            return True
    return False


def test_only_bridge_db_imports_asyncpg() -> None:
    importers = {
        p.relative_to(BRIDGE).as_posix() for p in BRIDGE.rglob("*.py") if _imports_asyncpg(p)
    }
    assert importers, "the scan found no importer at all: it would prove nothing"
    assert all(name.startswith("db/") for name in importers), sorted(importers)
