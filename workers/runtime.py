"""The worker: claim a job, run the science on this worker's device, write every trial
as it finishes, keep the lease alive from a thread of its own, honour cancel between
trials, and hand the job back at once on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from capacity_service import __version__, jobkinds
from capacity_service.provenance import stamped
from capacity_service.settings import Settings
from capacity_service.specs import CapacitySpec, ProgressValue, TrialRecord
from capacity_service.stopping import StopCheck, Stopped
from capacity_service.store.queries import Store
from capacity_service.store.records import Job, ResultSummary
from capacity_service.store.vocabulary import JobState, LeaseLostError, StoreError
from workers import metrics as worker_metrics
from workers.failures import (
    DependencyFailed,
    DependencyNotReady,
    backoff_seconds,
    classify,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


STORE_RETRY_SECONDS = 60.0  # how long a write waits for the database to come back


def retrying(write: Callable[[], T]) -> T:
    """Run a store write, retrying while the database is unreachable (a restart): every
    write the worker makes is idempotent or guarded by its lease."""
    deadline = time.monotonic() + STORE_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            return write()
        except LeaseLostError:
            raise
        except StoreError as error:
            if time.monotonic() > deadline:
                raise
            log.warning("store write failed, retrying: %s", error)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class Heartbeat(threading.Thread):
    """Renews one job's lease every `interval` seconds; training never starves it."""

    def __init__(self, store: Store, job: Job, worker_id: str, settings: Settings) -> None:
        super().__init__(name=f"heartbeat-{job.id}", daemon=True)
        self.store, self.job_id, self.worker_id = store, job.id, worker_id
        self.lease, self.interval = settings.lease_seconds, settings.heartbeat_seconds
        self.cancel_requested = job.cancel_requested
        self.lost = False
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.cancel_requested = self.store.heartbeat(
                    self.job_id, self.worker_id, self.lease
                )
            except LeaseLostError:
                self.lost = True
                return
            except StoreError as error:  # the database is away: retry at the next beat
                log.warning("heartbeat of job %s failed: %s", self.job_id, error)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class Worker:
    def __init__(
        self, store: Store, settings: Settings, device: str = "auto", worker_id: str | None = None
    ) -> None:
        self.store, self.settings, self.device = store, settings, device
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stopping = False

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: finishing the current trial batch, then leaving", signum)
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self, once: bool = False, wait_seconds: float = 0.0) -> int:
        """Claim and run jobs until stopped; returns how many jobs it ran.

        With `once` it runs at most one job: it polls for up to `wait_seconds` for a job
        to become claimable (a queued job, or a running one whose lease expires in that
        time), runs it and returns; with nothing claimable by then it returns 0.
        """
        done = 0
        give_up = time.monotonic() + wait_seconds
        try:  # seen by `GET /metrics` from now on; a database away now is not fatal
            self.store.register_worker(self.worker_id, socket.gethostname(), self.device)
        except StoreError as error:
            log.warning("worker %s not registered: %s", self.worker_id, error)
        while not self.stopping:
            try:
                job = self.store.claim(self.worker_id, self.settings.lease_seconds)
            except StoreError as error:  # e.g. PostgreSQL restarting: wait and retry
                log.warning("claim failed, retrying: %s", error)
                time.sleep(self.settings.poll_seconds)
                continue
            if job is None:
                if once and time.monotonic() >= give_up:
                    break
                time.sleep(self.settings.poll_seconds)
                continue
            worker_metrics.claimed(job.kind)
            self.execute(job)
            done += 1
            if once:
                break
        return done

    def execute(self, job: Job) -> None:
        log.info("job %s (%s) claimed by %s", job.id, job.kind, self.worker_id)
        heartbeat = Heartbeat(self.store, job, self.worker_id, self.settings)
        heartbeat.start()
        try:
            try:
                kind = jobkinds.get(job.kind)
                spec = kind.spec.model_validate(job.spec)
            except (ValueError, ValidationError) as error:
                self._end(job, JobState.FAILED, error=f"cannot run this job: {error}")
                return
            should_stop = lambda: (  # noqa: E731
                self.stopping or heartbeat.cancel_requested or heartbeat.lost
            )
            try:
                summary = self._run(job, kind, spec, should_stop)
            except Exception as error:
                if heartbeat.lost:
                    return
                self._after_failure(job, spec, error)
                return
            if heartbeat.lost:
                log.warning("job %s: lease lost; its result is left to the new holder", job.id)
            elif self.stopping:
                retrying(lambda: self.store.release(job.id, self.worker_id))
                log.info("job %s handed back to the queue", job.id)
            elif heartbeat.cancel_requested:
                self._end(job, JobState.CANCELLED)
            elif summary is not None:
                self._end(job, JobState.SUCCEEDED, result=summary)
        finally:
            heartbeat.stop()

    def _after_failure(self, job: Job, spec: BaseModel, error: Exception) -> None:
        """A transient failure goes back to the queue with backoff while attempts remain
        (a wait for a dependency costs none); anything else fails the job."""
        failure = classify(error)
        settings = self.settings
        if failure.kind == "dependency":
            log.info("job %s waits: %s", job.id, failure.message)
            self._requeue(job, f"waiting: {failure.message}", settings.dependency_poll_seconds,
                          count_attempt=False)  # fmt: skip
            return
        if not failure.transient:
            log.exception("job %s failed", job.id, exc_info=error)
            self._end(job, JobState.FAILED, error=failure.message)
            return
        replaced: BaseModel | None = None
        note = ""
        if failure.kind == "out-of-memory":
            smaller = smaller_stack(spec, self.device)
            if smaller is None:
                self._end(
                    job,
                    JobState.FAILED,
                    error=f"{failure.message} (even one trial "
                    "at a time does not fit: use a smaller model or search.batch_sizes)",
                )
                return
            replaced, note = smaller
        if job.attempts >= job.max_attempts:
            log.error("job %s failed on its last attempt: %s", job.id, failure.message)
            self._end(job, JobState.FAILED, error=f"gave up after {job.attempts} attempts "
                      f"({failure.kind}): {failure.message}")  # fmt: skip
            return
        delay = backoff_seconds(job.attempts, settings.retry_base_seconds,
                                settings.retry_max_seconds)  # fmt: skip
        log.warning("job %s attempt %s failed (%s), retrying in %g s: %s", job.id,
                    job.attempts, failure.kind, delay, failure.message)  # fmt: skip
        self._requeue(job, f"attempt {job.attempts} of {job.max_attempts} failed "
                      f"({failure.kind}), retried after {delay:g} s{note}: {failure.message}",
                      delay, spec=replaced)  # fmt: skip

    def _requeue(self, job: Job, error: str, delay: float, *, count_attempt: bool = True,
                 spec: BaseModel | None = None) -> None:  # fmt: skip
        document = None if spec is None else spec.model_dump(mode="json")
        try:
            retrying(lambda: self.store.requeue(job.id, self.worker_id, error=error,
                                                delay_seconds=delay, count_attempt=count_attempt,
                                                spec=document))  # fmt: skip
        except StoreError as failure:  # the database is still away: the lease will expire
            log.warning("job %s could not be handed back (%s); its lease will expire",
                        job.id, failure)  # fmt: skip

    def _end(self, job: Job, state: JobState, **details: Any) -> None:
        try:
            retrying(lambda: self.store.finish(job.id, self.worker_id, state, **details))
            worker_metrics.job_ended(job.kind, state.value)
        except LeaseLostError:
            log.warning("job %s: lease lost before it could be ended as %s", job.id, state)

    def _progress(self, job: Job, **progress: ProgressValue) -> None:
        try:
            self.store.set_progress(job.id, self.worker_id, progress)
        except StoreError as error:  # progress is advisory: the next update replaces it
            log.warning("progress of job %s not saved: %s", job.id, error)

    def _run(
        self, job: Job, kind: jobkinds.JobKind, spec: BaseModel, should_stop: StopCheck
    ) -> ResultSummary | None:
        """Run the job as its kind says; None when it was stopped (execute() says why)."""
        context = WorkerContext(self, job, should_stop)
        try:
            result = kind.run(context, spec)
        except Stopped:
            return None
        columns = kind.columns(result)
        return ResultSummary(
            result=stamped(result),
            params=columns.params,
            capacity_bits=columns.capacity_bits,
            bits_per_param=columns.bits_per_param,
            precision_boundary=columns.precision_boundary,
            code_version=__version__,
        )


class WorkerContext:
    """What a job running on this worker may ask of it (`jobkinds.JobContext`): its
    trials stored so far, where to store the next, progress, another job's result."""

    def __init__(self, worker: Worker, job: Job, should_stop: StopCheck) -> None:
        self.worker, self.job, self.should_stop = worker, job, should_stop
        self.device = worker.device
        self.store = worker.store

    def stored_trials(self) -> list[TrialRecord]:
        return retrying(lambda: self.store.trials(self.job.id))

    def trial_finished(self, record: TrialRecord) -> None:
        # written the moment it finishes; a retried write of the same index is ignored
        if not retrying(lambda: self.store.record_trial(self.job.id, record)):
            # another holder stored it first (or a retried write whose first try landed):
            # the soak benchmark counts these lines
            log.warning("job %s trial %s was already stored", self.job.id, record.index)
        worker_metrics.trial_finished(self.job.model_kind, record.wall_seconds)

    def progress(self, **fields: ProgressValue) -> None:
        self.worker._progress(self.job, **fields)

    def result_of(self, job_id: int) -> BaseModel:
        """The result of the job this one needs; DependencyNotReady while that job is
        queued or running, DependencyFailed when it ended without one."""
        source = retrying(lambda: self.store.get(job_id))
        result = retrying(lambda: self.store.result(job_id))
        if result is not None:
            return result
        if source.state in (JobState.QUEUED, JobState.RUNNING):
            raise DependencyNotReady(f"{source.kind} job {job_id} is {source.state}; this "
                                     "job starts when it has a result")  # fmt: skip
        why = f": {source.error}" if source.error else ""
        raise DependencyFailed(
            f"{source.kind} job {job_id} {source.state} without a result{why}; "
            f"retry it (capacity retry {job_id}), then this job"
        )


def smaller_stack(spec: BaseModel | None, device: str) -> tuple[CapacitySpec, str] | None:
    """The spec with half the trials in the stack (K), after the device ran out of memory,
    and a note saying so; None when K is already 1 (or the job does not stack trials)."""
    if not isinstance(spec, CapacitySpec):
        return None
    k = spec.search.batch
    if k is None:
        from capacity_service.science.device import resolve_device
        from capacity_service.science.engine.memory import default_k

        k = default_k(resolve_device(device))
    if k <= 1:
        return None
    lower = k // 2
    search = spec.search.model_copy(update={"batch": lower})
    smaller = spec.model_copy(update={"search": search})
    return smaller, f" with search.batch (K) lowered from {k} to {lower}"
