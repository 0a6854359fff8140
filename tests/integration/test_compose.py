"""The compose deployment is a valid Compose file (checked without a container engine)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed; scripts/test.sh installs it (apt)"
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "config"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_is_valid_and_wires_every_process() -> None:
    result = _config({"POSTGRES_PASSWORD": "p", "RABBITMQ_PASSWORD": "r", "SAGA_API_TOKEN": "t"})
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"postgres", "rabbitmq", "migrate", "api", "relay", "worker"} <= set(services)
    for name in ("api", "relay", "worker"):
        env = services[name]["environment"]
        assert env["SAGA_DATABASE_URL"].startswith("postgresql://saga:p@postgres")
        assert env["SAGA_BROKER_URL"].startswith("amqp://saga:r@rabbitmq")
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    # RabbitMQ has its own user, never guest.
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"] == "saga"


def test_compose_refuses_to_start_without_secrets() -> None:
    result = _config({})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr
