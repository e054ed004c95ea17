"""docker-compose.yml is valid Compose (checked by the docker client where it is present:
this machine has no Docker engine, so the stack itself is not started here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin), else `docker-compose` (v1), else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_is_valid() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no docker compose client on this machine")
    checked = subprocess.run([*command, "config"], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    resolved = checked.stdout
    services = subprocess.run(
        [*command, "config", "--services"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(services) == {"postgres", "migrate", "api", "worker-gpu0"}
    assert "pg_isready" in resolved  # postgres health gates the migration
    assert "service_completed_successfully" in resolved  # api and worker wait for it
    assert "driver: nvidia" in resolved and "gpu" in resolved  # the worker's GPU
