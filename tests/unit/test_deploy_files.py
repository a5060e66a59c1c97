"""What can be checked of docker/ without a Docker engine: the Compose file's shape,
the Dockerfile under hadolint, and the systemd unit's essentials.

There is no `docker compose` here (no engine, no compose plugin), so the Compose
file is validated against the Compose specification's JSON Schema (the copy that
check-jsonschema ships) and loaded with PyYAML to hold it to what the README promises.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_has_the_four_services() -> None:
    services = _compose()["services"]
    assert set(services) == {"mosquitto", "postgres", "migrate", "bridge"}
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert services["postgres"]["image"].startswith("postgres:")


def test_compose_mounts_the_top_level_mosquitto_conf() -> None:
    volumes = _compose()["services"]["mosquitto"]["volumes"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in volumes if v.startswith(".")}
    assert "../mosquitto.conf" in mounted
    assert (COMPOSE.parent / "../mosquitto.conf").resolve() == ROOT / "mosquitto.conf"
    # The entry config (an overlay adding a network listener) includes the directory
    # the shared file is mounted into, so that file is used unchanged.
    entry = next(k for k, v in mounted.items() if v == "/mosquitto/config/mosquitto.conf")
    include = mounted["../mosquitto.conf"].rsplit("/", 1)[0]
    assert f"include_dir {include}" in (COMPOSE.parent / entry).read_text()


def test_bridge_scales_and_waits_for_migrate() -> None:
    services = _compose()["services"]
    bridge, migrate = services["bridge"], services["migrate"]
    # --scale bridge=3 needs: no fixed name, no host port, a share group, ids by hostname.
    assert "container_name" not in bridge
    assert "ports" not in bridge
    env = bridge["environment"]
    assert env["BRIDGE_SHARE_GROUP"]
    assert "BRIDGE_CLIENT_ID" not in env  # default bridge-<hostname>: one per container
    assert env["BRIDGE_SECRET"].startswith("${BRIDGE_SECRET:?")
    assert bridge["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert env["BRIDGE_MQTT_URL"] == migrate["environment"]["BRIDGE_MQTT_URL"]
    assert "postgres:5432" in env["BRIDGE_DATABASE_URL"]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is missing; it comes with the test extra"
    return found


def _compose_schema_errors(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    done = _compose_schema_errors(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr
    # The validator really validates: a typo in a condition is caught.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("service_healthy", "service_heathy"))
    assert _compose_schema_errors(broken).returncode == 1


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text()
    assert "FROM python:3.11-slim" in text
    assert "\nUSER 10001" in text
    assert "HEALTHCHECK" in text and '"bridge", "check"' in text
    # Everything the Dockerfile copies is let through by .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_systemd_units_run_migrate_first() -> None:
    unit = (ROOT / "docs" / "systemd" / "bridge.service").read_text()
    assert "ExecStartPre=/opt/provisioning-bridge/bin/bridge migrate" in unit
    assert "ExecStart=/opt/provisioning-bridge/bin/bridge serve" in unit
    assert "User=bridge" in unit and "EnvironmentFile=" in unit
