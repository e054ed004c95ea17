"""Many workers on one PostgreSQL: the database is the coordinator."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from capacity_service.store.migrate import downgrade, upgrade
from capacity_service.store.queries import Store
from capacity_service.store.vocabulary import JobState
from tests.workers.test_worker import capacity_spec, start_worker, wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[Store]:
    downgrade(postgres_url)
    upgrade(postgres_url)
    store = Store(postgres_url)
    yield store
    store.close()


def stop(workers: list[subprocess.Popen[str]]) -> None:
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in workers:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_four_workers_run_two_hundred_jobs_exactly_once(pg_store: Store, postgres_url: str) -> None:
    jobs = [pg_store.submit("capacity", capacity_spec(1, epochs=3, batch=1), "fcdnn").job.id
            for _ in range(200)]  # fmt: skip
    workers = [start_worker(postgres_url) for _ in range(4)]
    try:
        wait_for(lambda: len(pg_store.list_jobs(state="succeeded", limit=500)) == 200, 600)
    finally:
        stop(workers)
    done = [pg_store.get(job_id) for job_id in jobs]
    assert all(job.state == JobState.SUCCEEDED and job.attempts == 1 for job in done)
    assert all(len(pg_store.trials(job_id)) == 1 for job_id in jobs)  # no trial twice
    claims = Counter(job.worker_id for job in done)
    assert len(claims) >= 2  # the work was shared


@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="needs a local cluster")
def test_workers_reconnect_after_a_postgres_restart(pg_store: Store, postgres_url: str) -> None:
    jobs = [pg_store.submit("capacity", capacity_spec(2, epochs=20, batch=1), "fcdnn").job.id
            for _ in range(10)]  # fmt: skip
    workers = [start_worker(postgres_url) for _ in range(2)]
    try:
        wait_for(lambda: len(pg_store.list_jobs(state="succeeded")) >= 2, 120)
        version = next(Path("/etc/postgresql").iterdir()).name
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                        "restart"], check=True, timeout=120)  # fmt: skip
        wait_for(lambda: len(pg_store.list_jobs(state="succeeded")) == 10, 300)
    finally:
        stop(workers)
    assert all(pg_store.get(job_id).state == JobState.SUCCEEDED for job_id in jobs)
