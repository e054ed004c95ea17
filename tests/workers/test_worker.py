"""Workers against real databases: in-process for the flow, real processes for signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capacity_service.settings import Settings
from capacity_service.specs import CapacityResult, SweepResult
from capacity_service.store.migrate import upgrade
from capacity_service.store.queries import Store
from capacity_service.store.vocabulary import JobState
from workers.runtime import Worker

TINY_MODEL = {"kind": "fcdnn", "width": 6, "n_in": 10}


def capacity_spec(trials: int, epochs: int = 30, batch: int = 6) -> dict[str, object]:
    search = {"budget_trials": trials, "batch": batch, "epochs": epochs, "batch_sizes": [8]}
    return {"model": TINY_MODEL, "search": search, "seed": 1}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return url


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    store = Store(sqlite_url)
    yield store
    store.close()


def fast_settings(url: str) -> Settings:
    return Settings(database_url=url, lease_seconds=2.0, heartbeat_seconds=0.2, poll_seconds=0.1)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def start_worker(url: str, *extra: str) -> subprocess.Popen[str]:
    env = os.environ | {
        "CAPACITY_DATABASE_URL": url,
        "CAPACITY_LEASE_SECONDS": "2",
        "CAPACITY_HEARTBEAT_SECONDS": "0.2",
        "CAPACITY_POLL_SECONDS": "0.1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "capacity_service.cli", "worker", "--device", "cpu", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_capacity_job_then_a_sweep_from_it(store: Store, sqlite_url: str) -> None:
    capacity, _ = store.submit("capacity", capacity_spec(6), "fcdnn")
    sweep_spec = {"model": TINY_MODEL, "regime": "half", "capacity_job": capacity.id,
                  "bits": [8, 4], "train": {"epochs": 20}, "retrain": {"epochs": 2}}  # fmt: skip
    worker = Worker(store, fast_settings(sqlite_url), device="cpu")
    assert worker.run(once=True) == 1
    done = store.get(capacity.id)
    assert done.state == JobState.SUCCEEDED and done.attempts == 1
    assert done.progress["trials_done"] == 6 and done.progress["stage"] == "bayes"
    trials = store.trials(capacity.id)
    assert [t.index for t in trials] == list(range(6))
    result = store.result(capacity.id)
    assert isinstance(result, CapacityResult)
    assert result.capacity_bits == max(t.mutual_information_bits for t in trials)
    sweep, _ = store.submit("quant_sweep", sweep_spec, "fcdnn")
    assert worker.run(once=True) == 1
    swept = store.result(sweep.id)
    assert store.get(sweep.id).state == JobState.SUCCEEDED and isinstance(swept, SweepResult)
    assert swept.curves[0].n == result.best.n // 2
    # each result says where it was computed: the worker's code, libraries and machine
    assert result.provenance and result.provenance.torch
    assert swept.provenance and swept.provenance.threads >= 1


def test_a_job_it_cannot_run_fails_with_the_reason_and_the_worker_goes_on(
    store: Store, sqlite_url: str
) -> None:
    mystery, _ = store.submit("mystery", {"model": TINY_MODEL}, "fcdnn")
    fine, _ = store.submit("capacity", capacity_spec(2), "fcdnn")
    worker = Worker(store, fast_settings(sqlite_url), device="cpu")
    assert worker.run(once=True) == 1
    failed = store.get(mystery.id)
    assert failed.state == JobState.FAILED and "unknown job kind 'mystery'" in (failed.error or "")
    assert worker.run(once=True) == 1
    assert store.get(fine.id).state == JobState.SUCCEEDED


def test_cancel_is_honoured_between_trials(store: Store, sqlite_url: str) -> None:
    job, _ = store.submit("capacity", capacity_spec(200, epochs=200, batch=2), "fcdnn")
    process = start_worker(sqlite_url, "--once")
    try:
        wait_for(lambda: len(store.trials(job.id)) >= 1)
        store.cancel(job.id)
        wait_for(lambda: store.get(job.id).state == JobState.CANCELLED)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert len(store.trials(job.id)) < 200


def test_cancel_stops_a_running_sweep_between_precisions(store: Store, sqlite_url: str) -> None:
    spec = {"model": {"kind": "fcdnn", "width": 16}, "n": 300, "bits": list(range(12, 0, -1)),
            "train": {"lr": 0.05, "batch_size": 16, "epochs": 300},
            "retrain": {"epochs": 300, "lr": 1e-6, "patience": 300}}  # fmt: skip
    job, _ = store.submit("quant_sweep", spec, "fcdnn")
    process = start_worker(sqlite_url, "--once")
    try:
        wait_for(lambda: store.get(job.id).progress.get("stage") == "sweep")
        store.cancel(job.id)
        wait_for(lambda: store.get(job.id).state == JobState.CANCELLED)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert store.result(job.id) is None
    assert store.get(job.id).progress["bits"] > 1  # it stopped before the last precision


def test_sigterm_hands_the_job_back_at_once(store: Store, sqlite_url: str) -> None:
    job, _ = store.submit("capacity", capacity_spec(200, epochs=200, batch=2), "fcdnn")
    process = start_worker(sqlite_url)
    try:
        wait_for(lambda: len(store.trials(job.id)) >= 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    back = store.get(job.id)
    assert back.state == JobState.QUEUED and back.attempts == 0 and back.worker_id is None


def test_a_killed_worker_is_replaced_and_no_finished_trial_runs_again(database_url: str) -> None:
    store = Store(database_url)
    job, _ = store.submit("capacity", capacity_spec(12, epochs=60, batch=2), "fcdnn")
    first = start_worker(database_url)
    second = None
    try:
        wait_for(lambda: len(store.trials(job.id)) >= 4)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        before = {t.index: t for t in store.trials(job.id)}
        # the job is still under the dead worker's lease: --once waits for it to expire
        second = start_worker(database_url, "--once", "--wait", "100")
        wait_for(lambda: store.get(job.id).state == JobState.SUCCEEDED, timeout=120)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    after = {t.index: t for t in store.trials(job.id)}
    # the budget counts the stored trials; a trial lost with the worker leaves its index
    # unused, and the new ones are numbered after every stored one
    assert len(after) == 12
    assert min(set(after) - set(before)) > max(before)
    assert all(after[i] == record for i, record in before.items())  # untouched, not rerun
    assert store.get(job.id).attempts == 2
    store.close()


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--once", "--wait", "-1"], "--wait must be zero or more"),
     (["--wait", "5"], "--wait applies to --once only")],
)  # fmt: skip
def test_worker_wait_flag_is_checked(
    sqlite_url: str, argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from capacity_service.cli import main

    assert main(["worker", "--database-url", sqlite_url, *argv]) == 2
    assert named in capsys.readouterr().err


def test_once_with_wait_takes_a_job_whose_lease_expires_meanwhile(
    store: Store, sqlite_url: str
) -> None:
    held, _ = store.submit("capacity", capacity_spec(2), "fcdnn")
    assert store.claim("alive", lease_seconds=3600) is not None
    worker = Worker(store, fast_settings(sqlite_url), device="cpu")
    assert worker.run(once=True) == 0  # no wait: nothing claimable now
    job, _ = store.submit("capacity", capacity_spec(2), "fcdnn")
    assert store.claim("gone", lease_seconds=0.5) is not None  # a worker that died holding it
    assert worker.run(once=True, wait_seconds=100) == 1  # returns once that job has run
    assert store.get(job.id).state == JobState.SUCCEEDED and store.get(job.id).attempts == 2
    assert store.get(held.id).state == JobState.RUNNING
