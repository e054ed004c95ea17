"""What the store returns: frozen records of jobs, API keys and results, never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from capacity_service import jobkinds
from capacity_service.specs import Progress, TrialRecord
from capacity_service.store.models import ApiKeyRow, JobRow, ResultRow
from capacity_service.store.vocabulary import JobState, StaleDocumentError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, kw_only=True)
class Job:
    id: int
    kind: str
    state: JobState
    spec: dict[str, object]  # as submitted: JSON the worker validates before it runs
    model_kind: str
    priority: int
    idempotency_key: str | None
    attempts: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    progress: Progress
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_after: datetime | None = None  # a retry waits until then (backoff)

    @classmethod
    def from_row(cls, row: JobRow) -> Job:
        return cls(
            id=row.id,
            kind=row.kind,
            state=JobState(row.state),
            spec=row.spec,
            model_kind=row.model_kind,
            priority=row.priority,
            idempotency_key=row.idempotency_key,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            worker_id=row.worker_id,
            cancel_requested=row.cancel_requested,
            progress=row.progress,
            error=row.error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            run_after=None if row.run_after is None else datetime.fromtimestamp(row.run_after, UTC),
        )


def iso(moment: datetime | None) -> str | None:
    """A stamp as ISO 8601 in UTC (None stays None)."""
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite keeps no zone; every stamp is written in UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    id: int
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKey:
        return cls(id=row.id, name=row.name, created_at=row.created_at, revoked_at=row.revoked_at)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, kw_only=True)
class StoredResult:
    """A finished job's result (its kind's result model) with the columns the dashboard
    filters on and the job's spec."""

    job_id: int
    model_kind: str
    params: int
    capacity_bits: float | None
    bits_per_param: float | None
    precision_boundary: int | None
    code_version: str
    created_at: datetime
    spec: BaseModel  # the kind's spec model
    result: BaseModel

    @classmethod
    def from_row(cls, row: ResultRow, spec: BaseModel, result: BaseModel) -> StoredResult:
        return cls(
            job_id=row.job_id,
            model_kind=row.model_kind,
            params=row.params,
            capacity_bits=row.capacity_bits,
            bits_per_param=row.bits_per_param,
            precision_boundary=row.precision_boundary,
            code_version=row.code_version,
            created_at=row.created_at,
            spec=spec,
            result=result,
        )


@dataclass(frozen=True, kw_only=True)
class ResultSummary:
    """A result to store, and the columns the dashboard sorts and filters on."""

    result: BaseModel
    params: int
    capacity_bits: float | None = None
    bits_per_param: float | None = None
    precision_boundary: int | None = None
    code_version: str


# -- documents read back: validated, so that what leaves the store is typed --------------


def read_result(job_id: int, kind: str, document: object) -> BaseModel:
    """The stored result of job `job_id` as its kind's result model."""
    model = _known_kind(job_id, kind).result
    return _validated(model, document, f"job {job_id}'s stored {kind} result")


def read_spec(job_id: int, kind: str, document: object) -> BaseModel:
    """The spec job `job_id` ran (it was validated when it ran) as its kind's spec model."""
    model = _known_kind(job_id, kind).spec
    return _validated(model, document, f"job {job_id}'s stored {kind} spec")


def _known_kind(job_id: int, kind: str) -> jobkinds.JobKind:
    try:
        return jobkinds.get(kind)
    except ValueError:
        raise StaleDocumentError(
            f"job {job_id} is of kind {kind!r}, which this process does not know; "
            "load the module that registers it (CAPACITY_PLUGINS)"
        ) from None


def read_trial(job_id: int, document: object) -> TrialRecord:
    return _validated(TrialRecord, document, f"a stored trial of job {job_id}")


def _validated(model: type[M], document: object, what: str) -> M:
    try:
        return model.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(the document)"
        raise StaleDocumentError(
            f"{what} has a shape this version cannot read ({field}: {first['msg']}); another "
            "version of capacity_service wrote it: read it with that version, or run the "
            "job again"
        ) from None
