"""The runners of `regress` and `experiments run` without a server: the API runner reads
its jobs' states from job-list pages, and a batch reports, cancels and names failures."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pytest

from capacity_service.api.schemas import JobDocument, JobPage
from capacity_service.reproduce.runners import ApiRunner
from capacity_service.reproduce.runs import Batch, Finished
from capacity_service.specs import CapacityResult, CapacitySpec, FCDNNSpec
from tests.factories import capacity_result

SPEC = CapacitySpec(model=FCDNNSpec(width=4))


class FakeClient:
    """GET /v1/jobs over jobs 1..count, newest first, pages below `cursor`."""

    def __init__(self, count: int, finished: set[int]) -> None:
        self.states = {i: "succeeded" if i in finished else "queued" for i in range(1, count + 1)}
        self.pages = 0
        self.cancelled: list[int] = []

    def jobs(self, cursor: int, limit: int) -> JobPage:
        self.pages += 1
        ids = sorted((i for i in self.states if i < cursor), reverse=True)[:limit]
        items = [job_document(i, self.states[i]) for i in ids]
        return JobPage(items=items, next_cursor=ids[-1] if len(ids) == limit else None)

    def job(self, job_id: int) -> JobDocument:
        raise AssertionError("every job is on a page")

    def result(self, job_id: int) -> CapacityResult:
        return capacity_result(job_id, 1.0)

    def cancel(self, job_id: int) -> None:
        self.cancelled.append(job_id)


def job_document(job_id: int, state: str) -> JobDocument:
    return JobDocument.model_validate({
        "id": job_id, "kind": "capacity", "state": state, "model_kind": "fcdnn", "priority": 0,
        "idempotency_key": None, "attempts": 1, "max_attempts": 3, "worker_id": None,
        "cancel_requested": False, "progress": {}, "error": None, "created_at": "2026-01-01",
        "started_at": None, "finished_at": None, "spec": {},
    })  # fmt: skip


def api_runner(client: FakeClient) -> ApiRunner:
    runner = ApiRunner.__new__(ApiRunner)
    runner.client = client  # type: ignore[assignment]
    runner.where, runner._polled = "through a fake", float("-inf")
    return runner


def test_the_api_runner_reads_its_jobs_from_the_pages_between_them() -> None:
    client = FakeClient(1_200, finished={700})
    runner = api_runner(client)
    # one request per 500 jobs from the newest waited-for one down to the oldest
    assert runner.wait([3, 700, 1_100]) == [Finished(700, "succeeded", capacity_result(700, 1.0))]
    assert client.pages == 3
    client.pages = 0
    client.states[1_100] = "failed"
    ended = runner.wait([1_100, 1_050])
    assert ended == [Finished(1_100, "failed", None, "job 1100")] and client.pages == 1


class ListRunner:
    """Finishes its jobs in the order submitted; job "bad" fails."""

    where = "in a list"

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.cancelled: list[int] = []

    def submit(self, kind: str, spec: Any, label: str) -> int:
        if label == "refused":
            raise ValueError("refused")
        self.jobs.append(label)
        return len(self.jobs)

    def wait(self, handles: Collection[int]) -> list[Finished]:
        handle = min(handles)
        if self.jobs[handle - 1] == "bad":
            return [Finished(handle, "failed", None, "it broke")]
        return [Finished(handle, "succeeded", capacity_result(10, 1.0))]

    def cancel(self, handles: Collection[int]) -> None:
        self.cancelled += sorted(handles)


def test_a_batch_prints_a_line_per_finished_job_and_keeps_going_past_a_failure() -> None:
    lines: list[str] = []
    batch = Batch(ListRunner(), 3, lines.append)
    for label in ("a", "bad", "c"):
        batch.submit("capacity", SPEC, label)
    ended = [outcome.state for _ in range(3) for outcome in batch.finished()]
    assert ended == ["succeeded", "failed", "succeeded"] and batch.finished() == []
    assert lines == [
        "finished a: succeeded (1 of 3)",
        "finished bad: failed: it broke (2 of 3)",
        "finished c: succeeded (3 of 3)",
    ]


def test_a_refused_submission_cancels_the_jobs_already_queued() -> None:
    runner = ListRunner()
    batch = Batch(runner, 3)
    batch.submit("capacity", SPEC, "a")
    batch.submit("capacity", SPEC, "b")
    with pytest.raises(ValueError, match="refused"):
        batch.submit("capacity", SPEC, "refused")
    assert runner.cancelled == [1, 2] and not batch.pending
