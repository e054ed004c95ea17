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

from pydantic import ValidationError

from capacity_service import __version__
from capacity_service.settings import Settings
from capacity_service.specs import (
    CapacitySpec,
    SweepPoint,
    SweepSpec,
    TrialRecord,
    validate_job_spec,
)
from capacity_service.store.queries import (
    Job,
    JobState,
    LeaseLostError,
    ResultSummary,
    Store,
    StoreError,
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
                spec = validate_job_spec(job.kind, job.spec)
            except (ValueError, ValidationError) as error:
                self._end(job, JobState.FAILED, error=f"cannot run this job: {error}")
                return
            should_stop = lambda: (  # noqa: E731
                self.stopping or heartbeat.cancel_requested or heartbeat.lost
            )
            try:
                if isinstance(spec, CapacitySpec):
                    summary = self._capacity(job, spec, should_stop)
                else:
                    summary = self._sweep(job, spec, should_stop)
            except Exception as error:
                if heartbeat.lost:
                    return
                log.exception("job %s failed", job.id)
                self._end(job, JobState.FAILED, error=f"{error.__class__.__name__}: {error}")
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

    def _end(self, job: Job, state: JobState, **details: Any) -> None:
        try:
            retrying(lambda: self.store.finish(job.id, self.worker_id, state, **details))
        except LeaseLostError:
            log.warning("job %s: lease lost before it could be ended as %s", job.id, state)

    def _progress(self, job: Job, **progress: Any) -> None:
        try:
            self.store.set_progress(job.id, self.worker_id, progress)
        except StoreError as error:  # progress is advisory: the next update replaces it
            log.warning("progress of job %s not saved: %s", job.id, error)

    def _capacity(self, job: Job, spec: CapacitySpec, should_stop: Any) -> ResultSummary | None:
        from capacity_service.science.search import search_capacity

        spec = spec.model_copy(update={"device": self.device})
        stored = retrying(lambda: self.store.trials(job.id))
        completed = [TrialRecord.model_validate(r) for r in stored]
        best = max((r.mutual_information_bits for r in completed), default=0.0)
        state: dict[str, Any] = {"stage": "prior", "trials_done": len(completed),
                                 "best_bits": best}  # fmt: skip

        def on_trial(record: TrialRecord) -> None:
            # written the moment it finishes; a retried write of the same index is ignored
            document = record.model_dump(mode="json")
            retrying(lambda: self.store.record_trial(job.id, record.index, document))
            state["trials_done"] += 1
            state["best_bits"] = max(state["best_bits"], record.mutual_information_bits)
            self._progress(job, **state)

        def on_stage(stage: str) -> None:
            state["stage"] = stage
            self._progress(job, **state)

        try:
            result = search_capacity(spec, completed, on_trial, on_stage, should_stop)
        except RuntimeError:
            if should_stop():
                return None
            raise
        if should_stop():
            return None
        return ResultSummary(
            document=result.model_dump(mode="json"),
            params=result.params,
            capacity_bits=result.capacity_bits,
            bits_per_param=result.bits_per_param,
            code_version=__version__,
        )

    def _sweep(self, job: Job, spec: SweepSpec, should_stop: Any) -> ResultSummary | None:
        from capacity_service.science.sweep import SweepStopped, sweep

        if spec.regime is not None and spec.capacity_n is None:
            source = retrying(lambda: self.store.result(spec.capacity_job or 0))
            if source is None:
                raise ValueError(f"capacity job {spec.capacity_job} has no result (yet)")
            spec = spec.model_copy(update={"capacity_n": int(source["best"]["n"])})
        spec = spec.model_copy(update={"device": self.device})

        def on_point(n: int, point: SweepPoint) -> None:
            self._progress(job, stage="sweep", n=n, bits=point.bits,
                           accuracy_retrained=point.accuracy_retrained)  # fmt: skip

        try:
            result = sweep(spec, on_point=on_point, should_stop=should_stop)
        except SweepStopped:
            return None
        first = result.curves[0]
        return ResultSummary(
            document=result.model_dump(mode="json"),
            params=result.params,
            precision_boundary=first.precision_boundary,
            code_version=__version__,
        )
