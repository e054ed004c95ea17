"""What workers do with the queue: claim a job under a lease, renew it, hand the job
back or end it, report progress; and the workers table that claims and heartbeats keep."""

from __future__ import annotations

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import Session

from capacity_service.specs import Progress
from capacity_service.store.db import Database, utc_now
from capacity_service.store.models import JobRow, ResultRow, WorkerRow
from capacity_service.store.records import Job, ResultSummary
from capacity_service.store.vocabulary import JobState, LeaseLostError

WORKER_FORGET_SECONDS = 7 * 86_400.0  # a worker row unseen this long is deleted


def claimable(now: float) -> ColumnElement[bool]:
    """A queued job no retry backoff holds back at `now` (the database's clock): what
    `claim` picks from, and what the queue-depth metric counts."""
    due = JobRow.run_after.is_(None) | (JobRow.run_after <= now)
    return (JobRow.state == JobState.QUEUED.value) & due


class Leases(Database):
    """The worker's side of the job store (`Store` adds the submitter's)."""

    def claim(self, worker_id: str, lease_seconds: float) -> Job | None:
        """Take the next queued job (highest priority, then oldest) for `worker_id`.

        First, running jobs whose lease has expired (by the database's clock) go back to
        the queue, or fail once they have used all their attempts. The pick is one row
        locked with SKIP LOCKED on PostgreSQL; on SQLite the transaction began IMMEDIATE,
        so no other writer runs between the read and the update.
        """
        with self.session() as session:
            now = self.clock(session)
            expired = (JobRow.state == JobState.RUNNING.value) & (JobRow.lease_expires_at < now)
            session.execute(
                update(JobRow)
                .where(expired & (JobRow.attempts >= JobRow.max_attempts))
                .values(
                    state=JobState.FAILED.value,
                    error="lease expired on every attempt (workers died or hung)",
                    finished_at=utc_now(),
                    worker_id=None,
                )
            )
            session.execute(
                update(JobRow)
                .where(expired)
                .values(state=JobState.QUEUED.value, worker_id=None, lease_expires_at=None)
            )
            self._seen(session, worker_id, now)
            pick = (
                select(JobRow)
                .where(claimable(now))
                .order_by(JobRow.priority.desc(), JobRow.id)
                .limit(1)
            )
            if self.engine.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            row = session.scalars(pick).first()
            if row is None:
                return None
            row.state = JobState.RUNNING.value
            row.worker_id = worker_id
            row.attempts += 1
            row.lease_expires_at = now + lease_seconds
            row.run_after = None
            row.started_at = row.started_at or utc_now()
            session.flush()
            return Job.from_row(row)

    def heartbeat(self, job_id: int, worker_id: str, lease_seconds: float) -> bool:
        """Renew the lease; True when a cancel was requested. LeaseLostError when the job
        is no longer this worker's."""
        with self.session() as session:
            now = self.clock(session)
            row = self._held(session, job_id, worker_id)
            row.lease_expires_at = now + lease_seconds
            self._seen(session, worker_id, now)
            return row.cancel_requested

    def release(self, job_id: int, worker_id: str) -> None:
        """Give a running job back to the queue at once (a clean shutdown: the attempt
        does not count)."""
        with self.session() as session:
            row = self._held(session, job_id, worker_id)
            row.state, row.worker_id, row.lease_expires_at = JobState.QUEUED.value, None, None
            row.attempts = max(0, row.attempts - 1)

    def requeue(
        self,
        job_id: int,
        worker_id: str,
        *,
        error: str,
        delay_seconds: float,
        count_attempt: bool = True,
        spec: dict[str, object] | None = None,
    ) -> Job:
        """Hand a running job back to the queue after a transient failure: no worker claims
        it for `delay_seconds` (by the database's clock). `error` says why, while it waits;
        an attempt that only waited for a dependency does not count (`count_attempt`);
        `spec` replaces the stored spec (a retry with a smaller stack after running out of
        memory)."""
        with self.session() as session:
            now = self.clock(session)
            row = self._held(session, job_id, worker_id)
            row.state, row.worker_id, row.lease_expires_at = JobState.QUEUED.value, None, None
            row.run_after, row.error = now + delay_seconds, error
            if not count_attempt:
                row.attempts = max(0, row.attempts - 1)
            if spec is not None:
                row.spec = spec
            session.flush()
            return Job.from_row(row)

    def set_progress(self, job_id: int, worker_id: str, progress: Progress) -> None:
        with self.session() as session:
            self._held(session, job_id, worker_id).progress = progress

    def finish(
        self,
        job_id: int,
        worker_id: str,
        state: JobState,
        *,
        error: str | None = None,
        result: ResultSummary | None = None,
    ) -> None:
        """End a running job as succeeded (with its result), failed or cancelled."""
        with self.session() as session:
            row = self._held(session, job_id, worker_id)
            row.state, row.error, row.finished_at = state.value, error, utc_now()
            row.lease_expires_at = None
            if result is not None:
                session.merge(
                    ResultRow(
                        job_id=job_id,
                        document=result.result.model_dump(mode="json"),
                        model_kind=row.model_kind,
                        params=result.params,
                        capacity_bits=result.capacity_bits,
                        bits_per_param=result.bits_per_param,
                        precision_boundary=result.precision_boundary,
                        code_version=result.code_version,
                        created_at=utc_now(),
                    )
                )

    def fail_unclaimed(self, job_id: int, error: str) -> None:
        """Fail a job outright (e.g. one whose kind this version cannot run)."""
        with self.session() as session:
            row = session.get(JobRow, job_id)
            if row is not None:
                row.state, row.error, row.finished_at = JobState.FAILED.value, error, utc_now()
                row.worker_id, row.lease_expires_at = None, None

    # -- workers ------------------------------------------------------------------

    def register_worker(self, worker_id: str, hostname: str, device: str) -> None:
        """Record a worker process; claims and heartbeats then keep its `last_seen`. Rows
        of workers unseen for WORKER_FORGET_SECONDS go (each process has an id of its own,
        so the table would only grow)."""
        with self.session() as session:
            now = self.clock(session)
            session.execute(
                delete(WorkerRow).where(WorkerRow.last_seen < now - WORKER_FORGET_SECONDS)
            )
            session.merge(WorkerRow(id=worker_id, hostname=hostname, device=device[:64],
                                    started_at=utc_now(), last_seen=now))  # fmt: skip

    def _seen(self, session: Session, worker_id: str, now: float) -> None:
        session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(last_seen=now))

    def _held(self, session: Session, job_id: int, worker_id: str) -> JobRow:
        row = session.get(JobRow, job_id, with_for_update=True)
        if row is None or row.state != JobState.RUNNING or row.worker_id != worker_id:
            raise LeaseLostError(f"job {job_id} is no longer held by worker {worker_id}")
        return row
