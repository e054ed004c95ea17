"""One contract suite for the job store, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import time

import pytest

from capacity_service.api.auth import hash_key, new_key
from capacity_service.specs import CapacitySpec
from capacity_service.store.queries import Store
from capacity_service.store.records import ResultSummary, iso
from capacity_service.store.vocabulary import (
    JobFinishedError,
    JobNotFoundError,
    JobState,
    JobStateError,
    LeaseLostError,
    StaleDocumentError,
)
from tests.factories import capacity_result, sweep_result, trial

SPEC = {"model": {"kind": "fcdnn", "width": 8}}


def submit(store: Store, **options: object) -> int:
    return store.submit("capacity", SPEC, "fcdnn", **options).job.id  # type: ignore[arg-type]


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
    assert store.record_trial(job_id, trial(0, n=10))
    assert store.record_trial(job_id, trial(1, n=20))
    assert not store.record_trial(job_id, trial(1, n=99))  # a retried write
    assert store.trials(job_id) == [trial(0, n=10), trial(1, n=20)]
    assert store.trials(job_id, after_index=0) == [trial(1, n=20)]


def test_release_and_finish_with_a_result(store: Store) -> None:
    job_id = submit(store)
    store.claim("w1", 60)
    store.release(job_id, "w1")
    released = store.get(job_id)
    assert released.state == JobState.QUEUED and released.attempts == 0
    store.claim("w2", 60)
    store.set_progress(job_id, "w2", {"stage": "bayes", "trials_done": 3})
    assert store.get(job_id).progress["stage"] == "bayes"
    result = capacity_result(params=10, bits_per_param=1.25)
    summary = ResultSummary(result=result, params=10, capacity_bits=12.5, bits_per_param=1.25,
                            code_version="0.1.0")  # fmt: skip
    store.finish(job_id, "w2", JobState.SUCCEEDED, result=summary)
    done = store.get(job_id)
    assert done.state == JobState.SUCCEEDED and done.finished_at is not None
    assert store.result(job_id) == result  # read back as the kind's result model
    with pytest.raises(LeaseLostError):
        store.set_progress(job_id, "w2", {})


def test_a_stored_document_of_an_older_shape_is_refused_by_name(store: Store) -> None:
    from capacity_service.store.models import ResultRow, TrialRow

    job_id = finish_with(store, "capacity", "fcdnn", 100, capacity_bits=200.0)
    store.record_trial(job_id, trial(0))
    with store.session() as session:  # as an older version might have written them
        session.get_one(ResultRow, job_id).document = {"capacity": 200.0}
        row = session.query(TrialRow).filter_by(job_id=job_id).one()
        row.record = row.record | {"n": "many"}
    with pytest.raises(StaleDocumentError, match=f"job {job_id}'s stored capacity result .*"
                       "cannot read .*run the job again"):  # fmt: skip
        store.result(job_id)
    with pytest.raises(StaleDocumentError, match=f"a stored trial of job {job_id} .*n:"):
        store.trials(job_id)
    assert store.get(job_id).state == JobState.SUCCEEDED  # nothing else is touched


def test_a_listed_result_whose_spec_no_longer_validates_is_refused_by_name(store: Store) -> None:
    from capacity_service.store.models import JobRow

    job_id = finish_with(store, "capacity", "fcdnn", 100, capacity_bits=200.0)
    with store.session() as session:  # a spec field this version no longer knows
        row = session.get_one(JobRow, job_id)
        row.spec = row.spec | {"budget": 60}
    with pytest.raises(StaleDocumentError, match=f"job {job_id}'s stored capacity spec .*budget"):
        store.results("capacity")
    assert store.get(job_id).spec["budget"] == 60  # the job itself still reads as stored


def test_submit_tells_new_from_replayed(store: Store) -> None:
    job, is_new = store.submit("capacity", SPEC, "fcdnn", idempotency_key="k")
    again, again_new = store.submit("capacity", SPEC, "fcdnn", idempotency_key="k")
    assert is_new and not again_new and again.id == job.id


def test_timestamps_are_utc_on_both_backends(store: Store) -> None:
    job = store.get(submit(store))
    assert iso(job.created_at).endswith("+00:00")  # type: ignore[union-attr]


def finish_with(store: Store, kind: str, model_kind: str, params: int, **columns: object) -> int:
    spec = {"model": {"kind": model_kind}} | ({"n": 64} if kind == "quant_sweep" else {})
    job, _ = store.submit(kind, spec, model_kind)
    claimed = store.claim("w", 60)
    assert claimed is not None and claimed.id == job.id
    result = (capacity_result(params, 1.0) if kind == "capacity"
              else sweep_result(params, 10, precision_boundary=6))  # fmt: skip
    summary = ResultSummary(result=result, params=params, code_version="0.1.0",
                            **columns)  # type: ignore[arg-type]  # fmt: skip
    store.finish(job.id, "w", JobState.SUCCEEDED, result=summary)
    return job.id


def test_results_filter_by_kind_model_and_parameters(store: Store) -> None:
    small = finish_with(store, "capacity", "fcdnn", 100, capacity_bits=200.0, bits_per_param=2.0)
    lstm = finish_with(store, "capacity", "lstm", 8_386, capacity_bits=3e4, bits_per_param=3.6)
    sweep = finish_with(store, "quant_sweep", "fcdnn", 100, precision_boundary=6)
    assert [r.job_id for r in store.results("capacity")] == [lstm, small]
    assert [r.job_id for r in store.results("quant_sweep")] == [sweep]
    assert [r.job_id for r in store.results("capacity", model_kind="lstm")] == [lstm]
    assert [r.job_id for r in store.results("capacity", max_params=1_000)] == [small]
    assert [r.job_id for r in store.results("capacity", min_params=1_000)] == [lstm]
    assert [r.job_id for r in store.results("capacity", after_job_id=lstm)] == [small]
    first = store.results("capacity", limit=1)[0]
    assert isinstance(first.spec, CapacitySpec) and first.spec.model.kind == "lstm"
    assert first.bits_per_param == 3.6
    assert store.results("quant_sweep")[0].precision_boundary == 6


def test_api_keys_are_stored_hashed_and_revocable(store: Store) -> None:
    from sqlalchemy import text

    key, secret = new_key(store, "ci")
    assert secret.startswith("cap_") and len(secret) > 40
    found = store.find_api_key(hash_key(secret))
    assert found is not None and found.id == key.id and not found.revoked
    assert store.find_api_key(hash_key(secret + "x")) is None
    with store.session() as session:  # only the hash is in the table
        stored = session.execute(text("SELECT key_hash FROM api_keys")).scalars().all()
    assert secret not in stored and len(stored[0]) == 64
    _, other = new_key(store, "ci")
    assert [k.id for k in store.revoke_api_keys("ci")] == [key.id, key.id + 1]
    revoked = store.find_api_key(hash_key(other))
    assert revoked is not None and revoked.revoked
    assert store.revoke_api_keys("ci") == []  # nothing active is left


def test_ping(store: Store) -> None:
    store.ping()


def test_a_requeued_job_waits_for_its_backoff(store: Store) -> None:
    job_id = submit(store)
    store.claim("w1", 60)
    waiting = store.requeue(job_id, "w1", error="attempt 1 failed", delay_seconds=3600)
    assert waiting.state == JobState.QUEUED and waiting.attempts == 1
    assert waiting.error == "attempt 1 failed" and waiting.run_after is not None
    assert store.claim("w2", 60) is None  # not before its run_after
    with pytest.raises(LeaseLostError):  # w1 no longer holds it
        store.requeue(job_id, "w1", error="again", delay_seconds=0)


def test_a_requeue_may_replace_the_spec_and_leave_the_attempt_uncounted(store: Store) -> None:
    job_id = submit(store)
    store.claim("w1", 60)
    smaller = {"model": {"kind": "fcdnn", "width": 8}, "search": {"batch": 4}}
    store.requeue(job_id, "w1", error="waiting", delay_seconds=0, count_attempt=False,
                  spec=smaller)  # fmt: skip
    again = store.claim("w2", 60)
    assert again is not None and again.id == job_id
    assert again.attempts == 1 and again.spec == smaller and again.run_after is None


def test_retry_queues_a_failed_or_cancelled_job_and_refuses_the_others(store: Store) -> None:
    failed, cancelled, running, queued = submit(store), submit(store), submit(store), submit(store)
    store.claim("w1", 60)  # takes `failed`
    store.record_trial(failed, trial(0, n=10))
    store.finish(failed, "w1", JobState.FAILED, error="boom")
    store.cancel(cancelled)
    store.claim("w2", 60)  # takes `running`, the oldest job still queued
    for job_id in (failed, cancelled):
        retried = store.retry(job_id)
        assert retried.state == JobState.QUEUED and retried.attempts == 0
        assert retried.error is None and retried.finished_at is None
    assert store.trials(failed) == [trial(0, n=10)]  # kept: the search resumes from them
    with pytest.raises(JobStateError) as error:
        store.retry(running)
    assert error.value.state == JobState.RUNNING and "running" in str(error.value)
    with pytest.raises(JobStateError, match="queued"):
        store.retry(queued)
    with pytest.raises(JobNotFoundError):
        store.retry(10_000)


def test_a_worker_is_seen_at_each_claim_and_heartbeat(store: Store) -> None:
    from sqlalchemy import select

    from capacity_service.store.models import WorkerRow

    def last_seen() -> float:
        with store.session(read_only=True) as session:
            return float(session.scalars(select(WorkerRow.last_seen)).one())

    store.register_worker("w1", "host-a", "cpu")
    registered = last_seen()
    job_id = submit(store)
    store.claim("w1", 60)
    claimed = last_seen()
    store.heartbeat(job_id, "w1", 60)
    assert registered <= claimed <= last_seen()


def test_workers_unseen_for_a_week_are_forgotten(store: Store) -> None:
    from sqlalchemy import select, update

    from capacity_service.store.models import WorkerRow

    store.register_worker("old", "host-a", "cpu")
    with store.session() as session:  # last seen eight days ago
        session.execute(update(WorkerRow).values(last_seen=WorkerRow.last_seen - 8 * 86_400))
    store.register_worker("new", "host-b", "cuda:0")
    with store.session(read_only=True) as session:
        assert list(session.scalars(select(WorkerRow.id))) == ["new"]
