"""Failures: transient ones go back to the queue with backoff, permanent ones fail the job
at once, a sweep waits for its capacity job, and a retried job resumes from its trials.
In-process workers on a real SQLite file; a fault is injected into the science only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import capacity_service.science.search as search_module
from capacity_service.settings import Settings
from capacity_service.store.migrate import upgrade
from capacity_service.store.queries import Store
from capacity_service.store.vocabulary import JobState, StoreError
from tests.workers.test_worker import TINY_MODEL, capacity_spec
from workers.failures import backoff_seconds, classify
from workers.runtime import Worker


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    store = Store(url)
    yield store
    store.close()


def worker_for(store: Store, **settings: Any) -> Worker:
    chosen = {"lease_seconds": 30.0, "heartbeat_seconds": 0.2, "poll_seconds": 0.05,
              "retry_base_seconds": 0.0, "dependency_poll_seconds": 0.0} | settings  # fmt: skip
    url = store.engine.url.render_as_string(hide_password=False)
    return Worker(store, Settings(database_url=url, **chosen), device="cpu")


def failing_first(monkeypatch: pytest.MonkeyPatch, *errors: Exception) -> list[dict[str, Any]]:
    """Make the search raise `errors` on its first calls, then run for real; the specs it
    was called with are recorded."""
    real = search_module.search_capacity
    calls: list[dict[str, Any]] = []
    pending = list(errors)

    def search(spec: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(spec.model_dump(mode="json"))
        if pending:
            raise pending.pop(0)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(search_module, "search_capacity", search)
    return calls


def test_failures_are_classified() -> None:
    assert classify(torch.OutOfMemoryError("CUDA out of memory")).kind == "out-of-memory"
    assert classify(RuntimeError("CUDA error: out of memory")).transient
    assert classify(StoreError("database error: OperationalError")).kind == "database"
    assert not classify(ValueError("model.width: must be positive")).transient
    assert not classify(KeyError("best")).transient  # a bug: retrying cannot help
    assert [backoff_seconds(a, 10, 60) for a in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_out_of_memory_retries_with_half_the_stack(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = failing_first(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"))
    job, _ = store.submit("capacity", capacity_spec(2, batch=6), "fcdnn")
    worker = worker_for(store)
    assert worker.run(once=True) == 1
    waiting = store.get(job.id)
    assert waiting.state == JobState.QUEUED and waiting.attempts == 1
    assert "out-of-memory" in (waiting.error or "") and "from 6 to 3" in (waiting.error or "")
    assert waiting.spec["search"]["batch"] == 3
    assert worker.run(once=True) == 1
    done = store.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.attempts == 2 and done.error is None
    assert [call["search"]["batch"] for call in calls] == [6, 3]


def test_a_transient_failure_fails_the_job_once_attempts_run_out(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_first(monkeypatch, StoreError("database error: gone"), StoreError("gone again"))
    job, _ = store.submit("capacity", capacity_spec(2), "fcdnn", max_attempts=2)
    worker = worker_for(store)
    assert worker.run(once=True) == 1
    assert store.get(job.id).state == JobState.QUEUED
    assert worker.run(once=True) == 1
    failed = store.get(job.id)
    assert failed.state == JobState.FAILED and failed.attempts == 2
    assert "gave up after 2 attempts (database)" in (failed.error or "")


def test_a_permanent_failure_fails_at_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_first(monkeypatch, KeyError("best"))
    job, _ = store.submit("capacity", capacity_spec(2), "fcdnn")
    assert worker_for(store).run(once=True) == 1
    failed = store.get(job.id)
    assert failed.state == JobState.FAILED and failed.attempts == 1
    assert failed.error == "KeyError: 'best'"


def test_the_backoff_keeps_a_retried_job_from_other_workers(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_first(monkeypatch, StoreError("database error: gone"))
    job, _ = store.submit("capacity", capacity_spec(2), "fcdnn")
    assert worker_for(store, retry_base_seconds=3600).run(once=True) == 1
    assert store.get(job.id).run_after is not None
    assert worker_for(store).run(once=True) == 0  # nothing claimable before its run_after


def sweep_of(capacity_job: int) -> dict[str, Any]:
    return {"model": TINY_MODEL, "regime": "half", "capacity_job": capacity_job,
            "bits": [8, 4], "train": {"epochs": 20}, "retrain": {"epochs": 2}}  # fmt: skip


def test_a_sweep_waits_for_its_capacity_job_without_spending_attempts(store: Store) -> None:
    capacity, _ = store.submit("capacity", capacity_spec(3), "fcdnn")
    sweep, _ = store.submit("quant_sweep", sweep_of(capacity.id), "fcdnn")
    assert store.claim("w0", 60) is not None  # another worker runs the capacity job
    worker = worker_for(store)
    assert worker.run(once=True) == 1  # takes the sweep, which must wait
    waiting = store.get(sweep.id)
    assert waiting.state == JobState.QUEUED and waiting.attempts == 0
    assert f"capacity job {capacity.id} is running" in (waiting.error or "")
    store.release(capacity.id, "w0")  # that worker leaves; this one takes it (oldest first)
    assert worker.run(once=True) == 1
    assert store.get(capacity.id).state == JobState.SUCCEEDED
    assert worker.run(once=True) == 1
    done = store.get(sweep.id)
    assert done.state == JobState.SUCCEEDED and done.attempts == 1


def test_a_sweep_whose_capacity_job_failed_fails_with_the_reason(store: Store) -> None:
    capacity, _ = store.submit("capacity", capacity_spec(3), "fcdnn")
    store.claim("w0", 60)
    store.finish(capacity.id, "w0", JobState.FAILED, error="ValueError: bad budget")
    sweep, _ = store.submit("quant_sweep", sweep_of(capacity.id), "fcdnn")
    assert worker_for(store).run(once=True) == 1
    failed = store.get(sweep.id)
    assert failed.state == JobState.FAILED
    assert f"capacity job {capacity.id} failed without a result: ValueError: bad budget" in (
        failed.error or ""
    )
    assert f"capacity retry {capacity.id}" in (failed.error or "")


def test_a_retried_job_resumes_from_its_trials(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _ = store.submit("capacity", capacity_spec(4), "fcdnn")
    worker = worker_for(store)
    real = search_module.search_capacity

    def interrupted(spec: Any, completed: Any, on_trial: Any, *args: Any) -> Any:
        def stored_then_crash(record: Any) -> None:  # the worker dies after two trials
            on_trial(record)
            if record.index == 1:
                raise KeyError("crash")

        return real(spec, completed, stored_then_crash, *args)

    monkeypatch.setattr(search_module, "search_capacity", interrupted)
    assert worker.run(once=True) == 1
    assert store.get(job.id).state == JobState.FAILED
    first = store.trials(job.id)
    assert [t.index for t in first] == [0, 1]
    monkeypatch.setattr(search_module, "search_capacity", real)
    store.retry(job.id)
    assert worker.run(once=True) == 1
    done = store.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.attempts == 1
    trials = store.trials(job.id)
    assert trials[:2] == first and len(trials) == 4  # the first two were not trained again
    seconds = [t.search_seconds for t in trials]
    assert None not in seconds and min(seconds[2:]) >= max(seconds[:2])  # type: ignore[type-var]
