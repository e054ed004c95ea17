"""What the store returns: frozen records of jobs, API keys and results, never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from capacity_service.store.models import ApiKeyRow, JobRow, ResultRow
from capacity_service.store.vocabulary import JobState


@dataclass(frozen=True, kw_only=True)
class Job:
    id: int
    kind: str
    state: JobState
    spec: dict[str, Any]
    model_kind: str
    priority: int
    idempotency_key: str | None
    attempts: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    progress: dict[str, Any]
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

    def to_document(self) -> dict[str, Any]:
        """The job as JSON: what the CLI prints and the API serves."""
        stamp = _iso
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "model_kind": self.model_kind,
            "priority": self.priority,
            "idempotency_key": self.idempotency_key,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "worker_id": self.worker_id,
            "cancel_requested": self.cancel_requested,
            "progress": self.progress,
            "error": self.error,
            "created_at": stamp(self.created_at),
            "started_at": stamp(self.started_at),
            "finished_at": stamp(self.finished_at),
            "run_after": stamp(self.run_after),
            "spec": self.spec,
        }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite keeps no zone; every stamp is written in UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _now() -> datetime:
    return datetime.now(UTC)


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

    def to_document(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": _iso(self.created_at),
                "revoked_at": _iso(self.revoked_at)}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class StoredResult:
    """A finished job's result with the columns the dashboard filters on and the job's spec."""

    job_id: int
    model_kind: str
    params: int
    capacity_bits: float | None
    bits_per_param: float | None
    precision_boundary: int | None
    code_version: str
    created_at: datetime
    spec: dict[str, Any]
    document: dict[str, Any]

    @classmethod
    def from_row(cls, row: ResultRow, spec: dict[str, Any]) -> StoredResult:
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
            document=row.document,
        )

    def curve_item(self) -> dict[str, Any]:
        """A capacity result as the dashboard and `capacity plot` use it."""
        best = self.document.get("best") or {}
        return {
            "job_id": self.job_id,
            "model_kind": self.model_kind,
            "model": self.spec.get("model", {}),
            "params": self.params,
            "capacity_bits": self.capacity_bits,
            "bits_per_param": self.bits_per_param,
            "conv_bits_per_param": self.document.get("conv_bits_per_param"),
            "best_n": best.get("n"),
            "quality": self.document.get("quality"),
            "curve": self.document.get("curve", []),
            "seed": self.document.get("seed"),
            "device": self.document.get("device"),
            "code_version": self.code_version,
            "created_at": _iso(self.created_at),
        }

    def sweep_item(self) -> dict[str, Any]:
        """A quantization sweep as the dashboard and `capacity plot` use it."""
        return {
            "job_id": self.job_id,
            "model_kind": self.model_kind,
            "model": self.spec.get("model", {}),
            "params": self.params,
            "quantized_params": self.document.get("quantized_params"),
            "regime": self.document.get("regime"),
            "tolerance": self.document.get("tolerance"),
            "precision_boundary": self.precision_boundary,
            "curves": self.document.get("curves", []),
            "code_version": self.code_version,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, kw_only=True)
class ResultSummary:
    """A result's whole document and the columns the dashboard sorts and filters on."""

    document: dict[str, Any]
    params: int
    capacity_bits: float | None = None
    bits_per_param: float | None = None
    precision_boundary: int | None = None
    code_version: str
