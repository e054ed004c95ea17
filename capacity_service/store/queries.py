"""The job store: the one module that queries the database. It returns the frozen
records of `records.py`, never ORM rows, and raises the errors of `vocabulary.py`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import BaseModel
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from capacity_service.specs import TrialRecord
from capacity_service.store.db import READ_ONLY, database_now_sql, make_engine
from capacity_service.store.models import ApiKeyRow, JobRow, ResultRow, TrialRow, WorkerRow
from capacity_service.store.records import (
    ApiKey,
    Job,
    ResultSummary,
    StoredResult,
    read_result,
    read_trial,
)
from capacity_service.store.vocabulary import (
    FINISHED,
    JobFinishedError,
    JobNotFoundError,
    JobState,
    JobStateError,
    LeaseLostError,
    StoreError,
)

WORKER_FORGET_SECONDS = 7 * 86_400.0  # a worker row unseen this long is deleted


def _now() -> datetime:
    return datetime.now(UTC)


class Submission(NamedTuple):
    job: Job
    new: bool  # False: the idempotency key's earlier job, nothing queued


class Store:
    """Jobs, trials and results in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, url: str, pool_size: int = 5) -> None:
        self.engine: Engine = make_engine(url, pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        reader = self.engine.execution_options(**{READ_ONLY: True})
        self._read_sessions = sessionmaker(reader, expire_on_commit=False)
        self._db_now = database_now_sql(self.engine)

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on error. A read-only one
        never waits for the write lock on SQLite."""
        session = self._read_sessions() if read_only else self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as error:
            session.rollback()
            raise StoreError(f"database error: {error.__class__.__name__}: {error}") from error
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """StoreError unless the database answers."""
        with self.session(read_only=True) as session:
            session.execute(text("SELECT 1"))

    # -- jobs ---------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        spec: dict[str, Any],
        model_kind: str,
        *,
        priority: int = 0,
        idempotency_key: str | None = None,
        max_attempts: int = 3,
    ) -> Submission:
        """Queue a job (the spec must already be valid). The same idempotency key returns
        the first job instead of queueing another, and says so (`new` is False)."""
        if idempotency_key is not None and (known := self._by_key(idempotency_key)):
            return Submission(known, new=False)
        values: dict[str, Any] = {
            "kind": kind,
            "state": JobState.QUEUED.value,
            "spec": spec,
            "model_kind": model_kind,
            "priority": priority,
            "idempotency_key": idempotency_key,
            "attempts": 0,
            "max_attempts": max_attempts,
            "cancel_requested": False,
            "progress": {},
            "created_at": _now(),
        }
        try:
            with self.session() as session:
                # one INSERT ... RETURNING, without the ORM's unit of work: submissions
                # are the API's hottest write
                job_id = session.execute(
                    insert(JobRow).values(**values).returning(JobRow.id)
                ).scalar_one()
        except StoreError as error:
            if idempotency_key is not None and isinstance(error.__cause__, IntegrityError):
                known = self._by_key(idempotency_key)  # a concurrent submit won the race
                if known is not None:
                    return Submission(known, new=False)
            raise
        fields = {k: v for k, v in values.items() if k != "state"}
        job = Job(id=job_id, state=JobState.QUEUED, worker_id=None, error=None,
                  started_at=None, finished_at=None, **fields)  # fmt: skip
        return Submission(job, new=True)

    def _by_key(self, key: str) -> Job | None:
        with self.session(read_only=True) as session:
            row = session.scalars(select(JobRow).where(JobRow.idempotency_key == key)).first()
            return None if row is None else Job.from_row(row)

    def get(self, job_id: int) -> Job:
        with self.session(read_only=True) as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id}")
            return Job.from_row(row)

    def list_jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        model_kind: str | None = None,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs by id, newest first; `after_id` continues a page (cursor pagination)."""
        query = select(JobRow).order_by(JobRow.id.desc()).limit(limit)
        if state is not None:
            query = query.where(JobRow.state == state)
        if kind is not None:
            query = query.where(JobRow.kind == kind)
        if model_kind is not None:
            query = query.where(JobRow.model_kind == model_kind)
        if after_id is not None:
            query = query.where(JobRow.id < after_id)
        with self.session(read_only=True) as session:
            return [Job.from_row(row) for row in session.scalars(query)]

    def cancel(self, job_id: int) -> Job:
        """A queued job is cancelled at once; a running one when its worker next looks
        (between trials)."""
        with self.session() as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id}")
            if row.state in FINISHED:
                raise JobFinishedError(f"job {job_id} has already {row.state}", JobState(row.state))
            if row.state == JobState.QUEUED:
                row.state, row.finished_at = JobState.CANCELLED.value, _now()
            else:
                row.cancel_requested = True
            session.flush()
            return Job.from_row(row)

    # -- the queue ----------------------------------------------------------------

    def claim(self, worker_id: str, lease_seconds: float) -> Job | None:
        """Take the next queued job (highest priority, then oldest) for `worker_id`.

        First, running jobs whose lease has expired (by the database's clock) go back to
        the queue, or fail once they have used all their attempts. The pick is one row
        locked with SKIP LOCKED on PostgreSQL; on SQLite the transaction began IMMEDIATE,
        so no other writer runs between the read and the update.
        """
        with self.session() as session:
            now = float(session.execute(select(self._db_now)).scalar_one())
            expired = (JobRow.state == JobState.RUNNING.value) & (JobRow.lease_expires_at < now)
            session.execute(
                update(JobRow)
                .where(expired & (JobRow.attempts >= JobRow.max_attempts))
                .values(
                    state=JobState.FAILED.value,
                    error="lease expired on every attempt (workers died or hung)",
                    finished_at=_now(),
                    worker_id=None,
                )
            )
            session.execute(
                update(JobRow)
                .where(expired)
                .values(state=JobState.QUEUED.value, worker_id=None, lease_expires_at=None)
            )
            self._seen(session, worker_id, now)
            due = JobRow.run_after.is_(None) | (JobRow.run_after <= now)
            pick = (
                select(JobRow)
                .where((JobRow.state == JobState.QUEUED.value) & due)
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
            row.started_at = row.started_at or _now()
            session.flush()
            return Job.from_row(row)

    def heartbeat(self, job_id: int, worker_id: str, lease_seconds: float) -> bool:
        """Renew the lease; True when a cancel was requested. LeaseLostError when the job
        is no longer this worker's."""
        with self.session() as session:
            now = float(session.execute(select(self._db_now)).scalar_one())
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
        spec: dict[str, Any] | None = None,
    ) -> Job:
        """Hand a running job back to the queue after a transient failure: no worker claims
        it for `delay_seconds` (by the database's clock). `error` says why, while it waits;
        an attempt that only waited for a dependency does not count (`count_attempt`);
        `spec` replaces the stored spec (a retry with a smaller stack after running out of
        memory)."""
        with self.session() as session:
            now = float(session.execute(select(self._db_now)).scalar_one())
            row = self._held(session, job_id, worker_id)
            row.state, row.worker_id, row.lease_expires_at = JobState.QUEUED.value, None, None
            row.run_after, row.error = now + delay_seconds, error
            if not count_attempt:
                row.attempts = max(0, row.attempts - 1)
            if spec is not None:
                row.spec = spec
            session.flush()
            return Job.from_row(row)

    def retry(self, job_id: int) -> Job:
        """Put a failed or cancelled job back in the queue with its attempts reset; the
        trials it stored are kept (its search resumes from them)."""
        with self.session() as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id}")
            if row.state not in (JobState.FAILED, JobState.CANCELLED):
                raise JobStateError(f"job {job_id} is {row.state}", JobState(row.state))
            row.state, row.attempts, row.error = JobState.QUEUED.value, 0, None
            row.cancel_requested, row.finished_at, row.run_after = False, None, None
            row.worker_id, row.lease_expires_at = None, None
            session.flush()
            return Job.from_row(row)

    def set_progress(self, job_id: int, worker_id: str, progress: dict[str, Any]) -> None:
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
            row.state, row.error, row.finished_at = state.value, error, _now()
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
                        created_at=_now(),
                    )
                )

    def fail_unclaimed(self, job_id: int, error: str) -> None:
        """Fail a job outright (e.g. one whose kind this version cannot run)."""
        with self.session() as session:
            row = session.get(JobRow, job_id)
            if row is not None:
                row.state, row.error, row.finished_at = JobState.FAILED.value, error, _now()
                row.worker_id, row.lease_expires_at = None, None

    # -- workers ------------------------------------------------------------------

    def register_worker(self, worker_id: str, hostname: str, device: str) -> None:
        """Record a worker process; claims and heartbeats then keep its `last_seen`. Rows
        of workers unseen for WORKER_FORGET_SECONDS go (each process has an id of its own,
        so the table would only grow)."""
        with self.session() as session:
            now = float(session.execute(select(self._db_now)).scalar_one())
            session.execute(
                delete(WorkerRow).where(WorkerRow.last_seen < now - WORKER_FORGET_SECONDS)
            )
            session.merge(WorkerRow(id=worker_id, hostname=hostname, device=device[:64],
                                    started_at=_now(), last_seen=now))  # fmt: skip

    def _seen(self, session: Session, worker_id: str, now: float) -> None:
        session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(last_seen=now))

    def _held(self, session: Session, job_id: int, worker_id: str) -> JobRow:
        row = session.get(JobRow, job_id, with_for_update=True)
        if row is None or row.state != JobState.RUNNING or row.worker_id != worker_id:
            raise LeaseLostError(f"job {job_id} is no longer held by worker {worker_id}")
        return row

    # -- trials and results -------------------------------------------------------

    def record_trial(self, job_id: int, record: TrialRecord) -> bool:
        """Store a finished trial; False when (job, index) was already stored, so a
        retried write never duplicates it."""
        document = record.model_dump(mode="json")
        try:
            with self.session() as session:
                session.add(TrialRow(job_id=job_id, index=record.index, record=document,
                                     created_at=_now()))  # fmt: skip
            return True
        except StoreError as error:
            if isinstance(error.__cause__, IntegrityError):
                return False
            raise

    def trials(
        self, job_id: int, *, after_index: int = -1, limit: int | None = None
    ) -> list[TrialRecord]:
        query = (
            select(TrialRow.record)
            .where(TrialRow.job_id == job_id, TrialRow.index > after_index)
            .order_by(TrialRow.index)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.session(read_only=True) as session:
            documents = list(session.scalars(query))
        return [read_trial(job_id, document) for document in documents]

    def result(self, job_id: int) -> BaseModel | None:
        """The job's result as its kind's result model (None while it has none);
        StaleDocumentError for a document of a shape this version cannot read."""
        query = (
            select(ResultRow.document, JobRow.kind)
            .join(JobRow, JobRow.id == ResultRow.job_id)
            .where(ResultRow.job_id == job_id)
        )
        with self.session(read_only=True) as session:
            found = session.execute(query).first()
        return None if found is None else read_result(job_id, found.kind, found.document)

    def results(
        self,
        kind: str,
        *,
        model_kind: str | None = None,
        min_params: int | None = None,
        max_params: int | None = None,
        after_job_id: int | None = None,
        limit: int = 50,
    ) -> list[StoredResult]:
        """Results of finished jobs of `kind`, newest job first (cursor pagination)."""
        query = (
            select(ResultRow, JobRow.spec)
            .join(JobRow, JobRow.id == ResultRow.job_id)
            .where(JobRow.kind == kind)
            .order_by(ResultRow.job_id.desc())
            .limit(limit)
        )
        if model_kind is not None:
            query = query.where(ResultRow.model_kind == model_kind)
        if min_params is not None:
            query = query.where(ResultRow.params >= min_params)
        if max_params is not None:
            query = query.where(ResultRow.params <= max_params)
        if after_job_id is not None:
            query = query.where(ResultRow.job_id < after_job_id)
        with self.session(read_only=True) as session:
            rows = list(session.execute(query))
        return [StoredResult.from_row(row, spec, read_result(row.job_id, kind, row.document))
                for row, spec in rows]  # fmt: skip

    # -- API keys -----------------------------------------------------------------

    def add_api_key(self, name: str, key_hash: str) -> ApiKey:
        """Store a new key by its hash (the secret itself is never stored; see api/auth.py)."""
        row = ApiKeyRow(name=name, key_hash=key_hash, created_at=_now())
        with self.session() as session:
            session.add(row)
            session.flush()
            return ApiKey.from_row(row)

    def revoke_api_keys(self, name: str) -> list[ApiKey]:
        """Revoke every active key called `name`; the keys revoked."""
        with self.session() as session:
            rows = session.scalars(
                select(ApiKeyRow).where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
            ).all()
            for row in rows:
                row.revoked_at = _now()
            session.flush()
            return [ApiKey.from_row(row) for row in rows]

    def api_keys(self) -> list[ApiKey]:
        with self.session(read_only=True) as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))
            return [ApiKey.from_row(row) for row in rows]

    def find_api_key(self, key_hash: str) -> ApiKey | None:
        """The key with this hash (revoked or not), or None."""
        with self.session(read_only=True) as session:
            row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash)).first()
            return None if row is None else ApiKey.from_row(row)
