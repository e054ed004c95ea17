"""The job store: jobs submitted, listed, cancelled and retried, their trials and
results, and API keys; the workers' side is `leases.py`. It returns the frozen records
of `records.py`, never ORM rows, and raises the errors of `vocabulary.py`."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from pydantic import BaseModel
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from capacity_service.specs import TrialRecord
from capacity_service.store.db import utc_now
from capacity_service.store.leases import Leases
from capacity_service.store.models import ApiKeyRow, JobRow, ResultRow, TrialRow
from capacity_service.store.records import (
    ApiKey,
    Job,
    StoredResult,
    read_result,
    read_spec,
    read_trial,
)
from capacity_service.store.vocabulary import (
    FINISHED,
    JobFinishedError,
    JobNotFoundError,
    JobState,
    JobStateError,
    StoreError,
)

# what a submission writes besides its state: the columns the database or a worker
# fills later are left out
_SUBMITTED_COLUMNS = ("kind", "spec", "model_kind", "priority", "idempotency_key",
                      "attempts", "max_attempts", "cancel_requested", "progress",
                      "created_at")  # fmt: skip


class Submission(NamedTuple):
    job: Job
    new: bool  # False: the idempotency key's earlier job, nothing queued


class Store(Leases):
    """Jobs, trials and results in one SQL database (SQLite or PostgreSQL): what a
    submitter, the API and the dashboard do here, and what workers do (`Leases`)."""

    # -- jobs ---------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        spec: dict[str, object],
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
        job = Job(id=0, kind=kind, state=JobState.QUEUED, spec=spec, model_kind=model_kind,
                  priority=priority, idempotency_key=idempotency_key, attempts=0,
                  max_attempts=max_attempts, worker_id=None, cancel_requested=False,
                  progress={}, error=None, created_at=utc_now(), started_at=None,
                  finished_at=None)  # fmt: skip
        values = {column: getattr(job, column) for column in _SUBMITTED_COLUMNS}
        values["state"] = job.state.value  # the column holds the plain string, as leases write it
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
        return Submission(replace(job, id=job_id), new=True)

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
                row.state, row.finished_at = JobState.CANCELLED.value, utc_now()
            else:
                row.cancel_requested = True
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

    # -- trials and results -------------------------------------------------------

    def record_trial(self, job_id: int, record: TrialRecord) -> bool:
        """Store a finished trial; False when (job, index) was already stored, so a
        retried write never duplicates it."""
        document = record.model_dump(mode="json")
        try:
            with self.session() as session:
                session.add(TrialRow(job_id=job_id, index=record.index, record=document,
                                     created_at=utc_now()))  # fmt: skip
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
        return [
            StoredResult.from_row(
                row, read_spec(row.job_id, kind, spec), read_result(row.job_id, kind, row.document)
            )
            for row, spec in rows
        ]

    # -- API keys -----------------------------------------------------------------

    def add_api_key(self, name: str, key_hash: str) -> ApiKey:
        """Store a new key by its hash (the secret itself is never stored; see api/auth.py)."""
        row = ApiKeyRow(name=name, key_hash=key_hash, created_at=utc_now())
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
                row.revoked_at = utc_now()
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
