"""One contract suite for the job store, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import time

import pytest

from capacity_service.store.queries import (
    JobFinishedError,
    JobNotFoundError,
    JobState,
    LeaseLostError,
    ResultSummary,
    Store,
)

SPEC = {"model": {"kind": "fcdnn", "width": 8}}


def submit(store: Store, **options: object) -> int:
    return store.submit("capacity", SPEC, "fcdnn", **options).id  # type: ignore[arg-type]


def test_submit_get_and_list(store: Store) -> None:
    first, second = submit(store), submit(store, priority=5)
    job = store.get(first)
    assert job.state == JobState.QUEUED and job.spec == SPEC and job.attempts == 0
    assert [j.id for j in store.list_jobs()] == [second, first]
    assert [j.id for j in store.list_jobs(after_id=second)] == [first]
    assert store.list_jobs(state="running") == []
    assert [j.id for j in store.list_jobs(model_kind="fcdnn", kind="capacity")] == [second, first]
    with pytest.raises(JobNotFoundError):
        store.get(10_000)


def test_idempotency_key_returns_the_first_job(store: Store) -> None:
    first = submit(store, idempotency_key="nightly-1")
    again = submit(store, idempotency_key="nightly-1")
    assert first == again
    assert len(store.list_jobs()) == 1


def test_claim_takes_priority_then_age_and_never_twice(store: Store) -> None:
    low, high = submit(store), submit(store, priority=9)
    claimed = store.claim("w1", lease_seconds=60)
    assert claimed is not None and claimed.id == high
    assert claimed.state == JobState.RUNNING and claimed.worker_id == "w1" and claimed.attempts == 1
    second = store.claim("w2", lease_seconds=60)
    assert second is not None and second.id == low
    assert store.claim("w3", lease_seconds=60) is None


def test_an_expired_lease_goes_back_to_the_queue_then_fails(store: Store) -> None:
    job_id = submit(store, max_attempts=2)
    assert store.claim("w1", lease_seconds=0.05) is not None
    time.sleep(0.2)
    retaken = store.claim("w2", lease_seconds=0.05)
    assert retaken is not None and retaken.id == job_id and retaken.attempts == 2
    with pytest.raises(LeaseLostError):  # w1 lost it
        store.heartbeat(job_id, "w1", 60)
    time.sleep(0.2)
    assert store.claim("w3", lease_seconds=60) is None
    failed = store.get(job_id)
    assert failed.state == JobState.FAILED and "lease expired" in (failed.error or "")


def test_heartbeat_renews_and_reports_cancel(store: Store) -> None:
    job_id = submit(store)
    store.claim("w1", lease_seconds=0.3)
    for _ in range(4):
        time.sleep(0.1)
        assert store.heartbeat(job_id, "w1", 0.3) is False
    assert store.claim("w2", lease_seconds=60) is None  # still held
    store.cancel(job_id)
    assert store.heartbeat(job_id, "w1", 0.3) is True


def test_cancel_queued_running_and_finished(store: Store) -> None:
    queued = submit(store)
    assert store.cancel(queued).state == JobState.CANCELLED
    running = submit(store)
    store.claim("w1", 60)
    assert store.cancel(running).cancel_requested
    store.finish(running, "w1", JobState.CANCELLED)
    with pytest.raises(JobFinishedError):
        store.cancel(running)


def test_trials_are_written_once_per_index(store: Store) -> None:
    job_id = submit(store)
    assert store.record_trial(job_id, 0, {"n": 10})
    assert store.record_trial(job_id, 1, {"n": 20})
    assert not store.record_trial(job_id, 1, {"n": 99})  # a retried write
    assert store.trials(job_id) == [{"n": 10}, {"n": 20}]
    assert store.trials(job_id, after_index=0) == [{"n": 20}]


def test_release_and_finish_with_a_result(store: Store) -> None:
    job_id = submit(store)
    store.claim("w1", 60)
    store.release(job_id, "w1")
    released = store.get(job_id)
    assert released.state == JobState.QUEUED and released.attempts == 0
    store.claim("w2", 60)
    store.set_progress(job_id, "w2", {"stage": "bayes", "trials_done": 3})
    assert store.get(job_id).progress["stage"] == "bayes"
    summary = ResultSummary(document={"capacity_bits": 12.5}, params=10, capacity_bits=12.5,
                            bits_per_param=1.25, code_version="0.1.0")  # fmt: skip
    store.finish(job_id, "w2", JobState.SUCCEEDED, result=summary)
    done = store.get(job_id)
    assert done.state == JobState.SUCCEEDED and done.finished_at is not None
    assert store.result(job_id) == {"capacity_bits": 12.5}
    with pytest.raises(LeaseLostError):
        store.set_progress(job_id, "w2", {})
