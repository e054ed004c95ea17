"""A real API server (`capacity serve`, uvicorn in its own process) on a real database,
reached over loopback HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from capacity_service.api.auth import new_key
from capacity_service.store.migrate import upgrade
from capacity_service.store.queries import Store
from tests.conftest import create_postgres_database, drop_postgres_database

TEST_LIMITS = {"CAPACITY_MAX_TRIALS": "200", "CAPACITY_MAX_PARAMS": "2000000"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    url: str
    database_url: str
    key: str  # a valid API key
    store: Store
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    database_url: str, log: Path, *args: str, probe: str = "/readyz", **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`capacity serve` on a free port; returns once `probe` answers 200."""
    port = free_port()
    environment = os.environ | TEST_LIMITS | env | {"CAPACITY_DATABASE_URL": database_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "capacity_service.cli", "serve", "--port", str(port), *args],
        env=environment,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}{probe}", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the API server did not start:\n{log.read_text()}")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database of each backend, for one test module."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'capacity.db'}"
        upgrade(url)
        yield url
        return
    url = create_postgres_database()
    upgrade(url)
    yield url
    drop_postgres_database(url)


@pytest.fixture(scope="module")
def server(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    store = Store(backend_url)
    _, key = new_key(store, "tests")
    process, url = start_server(backend_url, log, "--migrate")
    yield Server(url=url, database_url=backend_url, key=key, store=store, process=process, log=log)
    stop(process)
    store.close()
