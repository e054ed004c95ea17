"""How `regress` and `experiments` run their jobs (the `Runner` of capacity_service.reproduce.runs):
here, one after another in this process, or through the REST API, every job queued at
once so that N workers run them N at a time."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from pydantic import BaseModel

from capacity_service.reproduce.runs import Finished
from capacity_service.specs import ProgressValue, TrialRecord
from capacity_service.store.vocabulary import JobState

if TYPE_CHECKING:
    from capacity_service.api.schemas import JobDocument

POLL_SECONDS = 1.0  # the API runner asks for its jobs' states at most once a second
OUTAGE_SECONDS = 60.0  # how long it keeps asking while the API does not answer (a restart)
PAGE = 500  # the job list's largest page
LARGEST_ID = 2**31 - 1  # the largest cursor the job list takes


class LocalContext:
    """A job run in this process (`jobkinds.JobContext`): nothing stored before it, its
    trials and progress not kept (its result holds them), no other job to ask."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.should_stop = None

    def stored_trials(self) -> list[TrialRecord]:
        return []

    def trial_finished(self, record: TrialRecord) -> None:
        pass

    def progress(self, **fields: ProgressValue) -> None:
        pass

    def result_of(self, job_id: int) -> BaseModel:
        raise ValueError(f"a job run in this process cannot use job {job_id}'s result; "
                         "give capacity_n instead of capacity_job")  # fmt: skip


class LocalRunner:
    """Runs a job when it is waited for, the oldest submitted first: one at a time."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.where = f"in this process ({device})"
        self._jobs: dict[int, tuple[str, BaseModel, str]] = {}
        self._submitted = 0

    def submit(self, kind: str, spec: BaseModel, label: str) -> int:
        self._submitted += 1
        self._jobs[self._submitted] = (kind, spec, label)
        return self._submitted

    def wait(self, handles: Collection[int]) -> list[Finished]:
        from capacity_service import jobkinds
        from capacity_service.provenance import stamped

        handle = min(handles)
        kind_name, spec, label = self._jobs.pop(handle)
        print(f"running {label} {self.where}", file=sys.stderr, flush=True)
        result = jobkinds.get(kind_name).run(LocalContext(self.device), spec)
        return [Finished(handle, JobState.SUCCEEDED, stamped(result))]

    def cancel(self, handles: Collection[int]) -> None:
        for handle in handles:
            self._jobs.pop(handle, None)


class ApiRunner:
    """Queues each job at submit; `wait` polls the job list (one page from the newest
    waited-for job down covers them all, whatever their number) at most once a second."""

    def __init__(self, url: str) -> None:
        from capacity_service.client import ApiClient
        from capacity_service.settings import Settings

        self.client = ApiClient(url, Settings().api_key)
        self.where = f"through {url}"
        self._polled = float("-inf")

    def submit(self, kind: str, spec: BaseModel, label: str) -> int:
        return self.client.submit(kind, spec.model_dump(mode="json")).id

    def wait(self, handles: Collection[int]) -> list[Finished]:
        from capacity_service.client import ApiError

        answered = time.monotonic()
        while True:
            time.sleep(max(0.0, self._polled + POLL_SECONDS - time.monotonic()))
            self._polled = time.monotonic()
            try:
                jobs = self._jobs(set(handles))
            except ApiError as error:
                if error.status not in (0, 502, 503, 504) or (
                    self._polled - answered > OUTAGE_SECONDS
                ):
                    raise
                continue
            answered = self._polled
            ended = [job for job in jobs if job.finished]
            if ended:
                return [self._finished(job) for job in ended]

    def _jobs(self, wanted: set[int]) -> list[JobDocument]:
        found: dict[int, JobDocument] = {}
        cursor: int | None = min(max(wanted) + 1, LARGEST_ID)  # the page from the newest down
        while cursor is not None and len(found) < len(wanted):
            page = self.client.jobs(cursor=cursor, limit=PAGE)
            found |= {job.id: job for job in page.items if job.id in wanted}
            cursor = page.next_cursor
            if cursor is not None and cursor <= min(wanted):
                cursor = None
        for missing in wanted - found.keys():  # not listed (should not happen): ask for it
            found[missing] = self.client.job(missing)
        return list(found.values())

    def _finished(self, job: JobDocument) -> Finished:
        name = f"job {job.id}"
        if job.state != JobState.SUCCEEDED:
            reason = f"{name}: {job.error}" if job.error else name
            return Finished(job.id, job.state, None, reason)
        result = self.client.result(job.id)
        if result is None:
            return Finished(job.id, JobState.FAILED, None, f"{name} succeeded with no result")
        return Finished(job.id, JobState.SUCCEEDED, result)

    def cancel(self, handles: Collection[int]) -> None:
        from capacity_service.client import ApiError

        for handle in handles:
            # finished meanwhile, or the API is away: nothing more to do
            with contextlib.suppress(ApiError):
                self.client.cancel(handle)
