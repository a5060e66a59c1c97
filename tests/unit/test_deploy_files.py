"""What can be checked of docker/ without a container engine: the Compose file's shape,
the Dockerfiles under hadolint, and the systemd unit's essentials.

The Compose file is validated against the Compose specification's JSON Schema (the copy
that check-jsonschema ships) and loaded with PyYAML to hold it to what the README
promises. It is run for real by docker/test-compose.sh (podman, in `.ci/run`).
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


SERVICES = {"postgres", "migrate", "broker-init", "mosquitto", "bridge"}
DOCKERFILES = sorted((ROOT / "docker").glob("*Dockerfile"))


def test_compose_builds_every_image_from_one_debian_base() -> None:
    services = _compose()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        # Nothing is pulled: every image is one of ours, built from docker/ with the
        # BASE_IMAGE argument (CI: the mmdebstrap base; elsewhere debian:bookworm-slim).
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file(), name
        assert build["args"]["BASE_IMAGE"] == "${BRIDGE_BASE_IMAGE:-debian:bookworm-slim}"
        assert service["image"].startswith("provisioning-bridge"), name
    assert {p.name for p in DOCKERFILES} == {
        "Dockerfile",
        "mosquitto.Dockerfile",
        "postgres.Dockerfile",
    }
    for path in DOCKERFILES:
        text = path.read_text()
        assert "ARG BASE_IMAGE=debian:bookworm-slim" in text, path.name
        froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
        assert froms and all(f == "${BASE_IMAGE}" for f in froms), path.name


def test_compose_names_no_secret() -> None:
    # Passwords and the server secret come from the environment (or docker/.env), never
    # from the file: every occurrence is a required ${VAR:?...} substitution.
    text = COMPOSE.read_text()
    for name in (
        "BRIDGE_SECRET",
        "BRIDGE_DB_PASSWORD",
        "BRIDGE_DB_OWNER_PASSWORD",
        "BRIDGE_BROKER_PASSWORD",
        "BRIDGE_BROKER_ADMIN_PASSWORD",
    ):
        uses = [part for part in text.split("${")[1:] if part.startswith(name + ":")]
        assert uses, name
        assert all(u.startswith(name + ":?") for u in uses), name


def test_bridge_scales_and_waits_for_migrate() -> None:
    services = _compose()["services"]
    bridge, migrate = services["bridge"], services["migrate"]
    # N replicas need: no fixed name, no host port, a share group, ids by hostname.
    assert "container_name" not in bridge
    assert "ports" not in bridge
    assert bridge["deploy"] == {"mode": "replicated", "replicas": "${BRIDGE_REPLICAS:-3}"}
    env = bridge["environment"]
    assert env["BRIDGE_SHARE_GROUP"]
    assert "BRIDGE_CLIENT_ID" not in env  # default from the hostname: one per container
    assert env["BRIDGE_SECRET"].startswith("${BRIDGE_SECRET:?")
    assert env["BRIDGE_DYNSEC"] == "true"
    assert env["BRIDGE_DYNSEC_USERNAME"] == "bridge-admin"
    assert env["BRIDGE_MQTT_URL"].startswith("mqtt://bridge:${BRIDGE_BROKER_PASSWORD:?")
    conditions = {k: v["condition"] for k, v in bridge["depends_on"].items()}
    assert conditions == {
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
        "broker-init": "service_completed_successfully",
        "mosquitto": "service_started",
    }
    assert migrate["command"][0] == "migrate" and "--wait" in migrate["command"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Migrations run as the owner role; the bridges as the runtime role.
    assert migrate["environment"]["BRIDGE_DATABASE_URL"].startswith("postgresql://bridge_owner:")
    assert env["BRIDGE_DATABASE_URL"].startswith("postgresql://bridge:")
    assert "postgres:5432" in env["BRIDGE_DATABASE_URL"]


def test_broker_gets_its_files_from_broker_init_and_publishes_only_tls() -> None:
    services = _compose()["services"]
    init, broker = services["broker-init"], services["mosquitto"]
    assert init["command"][0] == "broker-files"
    assert (
        init["environment"]["BRIDGE_MQTT_URL"]
        == services["bridge"]["environment"]["BRIDGE_MQTT_URL"]
    )
    assert broker["depends_on"]["broker-init"]["condition"] == "service_completed_successfully"
    assert broker["ports"] == ["${BRIDGE_MQTTS_PORT:-8883}:8883"]
    assert "${BRIDGE_TLS_DIR:-./tls}:/tls:ro" in broker["volumes"]
    assert "--tls-dir=/tls" in init["command"]
    plugin = next(a for a in init["command"] if a.startswith("--plugin="))
    assert plugin.split("=", 1)[1] in (ROOT / "docker" / "mosquitto.Dockerfile").read_text()


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
    assert "python3 -m venv /opt/bridge" in text and '".[fast]"' in text
    assert "\nUSER 10001" in text
    assert "HEALTHCHECK" in text and '"bridge", "check"' in text
    # Everything the Dockerfiles copy is let through by .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text()
    for path in DOCKERFILES:
        for line in path.read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def test_dockerfiles_pass_hadolint() -> None:
    for path in DOCKERFILES:
        done = subprocess.run(
            [_tool("hadolint"), str(path)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_systemd_units_run_migrate_first() -> None:
    unit = (ROOT / "docs" / "systemd" / "bridge.service").read_text()
    assert "ExecStartPre=/opt/provisioning-bridge/bin/bridge migrate" in unit
    assert "ExecStart=/opt/provisioning-bridge/bin/bridge serve" in unit
    assert "User=bridge" in unit and "EnvironmentFile=" in unit
