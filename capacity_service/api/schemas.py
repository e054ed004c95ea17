"""Request and response bodies of the API, and the documents the CLI prints: a job, a
page of jobs or trials, a stored capacity (`CurveItem`) or sweep (`SweepItem`). Job specs
and results are the models the job kinds registry (`capacity_service.jobkinds`) names;
the request union, the kind names and the result union are built from it when this
module is imported."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from capacity_service import jobkinds
from capacity_service.specs import (
    CapacityResult,
    CurvePoint,
    Int,
    ModelSpec,
    SearchQuality,
    SweepCurve,
    SweepResult,
    TrialRecord,
)
from capacity_service.store.records import Job, StoredResult, iso
from capacity_service.store.vocabulary import FINISHED, JobState

ModelKindName = Literal["fcdnn", "cnn", "lstm", "gru", "rnn"]
# ids are 32-bit integers in PostgreSQL; anything larger cannot name a row
LARGEST_ID = 2**31 - 1
# query parameters of every paginated list
Limit = Annotated[int, Query(ge=1, le=500, description="items per page")]
Cursor = Annotated[
    int | None, Query(ge=1, le=LARGEST_ID, description="next_cursor of the page before")
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    priority: Int = Field(0, ge=-1000, le=1000, description="higher runs first")
    idempotency_key: str | None = Field(
        None,
        pattern=r"^[!-~]{1,200}$",
        description="printable ASCII, no spaces; submitting the same key again returns "
        "the job it first created instead of queueing another",
    )


def _request_model(kind: jobkinds.JobKind) -> type[_Request]:
    """The body that submits a job of `kind`: {"kind": name, "spec": {...}, ...}."""
    title = "".join(part.capitalize() for part in kind.name.split("_"))
    return create_model(
        f"{title}JobRequest",
        __base__=_Request,
        __doc__=f"A {kind.name} job: {kind.description}.",
        kind=(Literal[kind.name], ...),  # type: ignore[arg-type]
        spec=(kind.spec, ...),
    )


def _one_of(models: list[Any], **field: Any) -> Any:
    """The union of `models` (a lone model as it is: a union needs two)."""
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(**field)]  # noqa: UP007 (built at run time)


if TYPE_CHECKING:  # what mypy sees of the types built from the registry

    class JobRequest(_Request):
        kind: str
        spec: Any

    JobKindName = str
    ResultModel = BaseModel
else:
    JobRequest = _one_of([_request_model(k) for k in jobkinds.KINDS.values()],
                         discriminator="kind")  # fmt: skip
    JobKindName = Literal[jobkinds.names()]
    ResultModel = _one_of([k.result for k in jobkinds.KINDS.values()])


class JobDocument(BaseModel):
    """A job as stored: what `capacity job ID --json` prints too."""

    id: int
    # any stored kind: a job of a kind this process has not loaded (a plugin the workers
    # load) is still listed
    kind: str = Field(description="the job kind (see jobkinds)")
    state: JobState
    model_kind: str
    priority: int
    idempotency_key: str | None
    attempts: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    progress: dict[str, Any] = Field(description="stage, trials_done, best_bits while running")
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    run_after: str | None = Field(
        None, description="a job retried after a transient failure waits until then"
    )
    spec: dict[str, Any] = Field(description="as submitted (the kind's spec)")

    @classmethod
    def of(cls, job: Job) -> JobDocument:
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            model_kind=job.model_kind,
            priority=job.priority,
            idempotency_key=job.idempotency_key,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            worker_id=job.worker_id,
            cancel_requested=job.cancel_requested,
            progress=job.progress,
            error=job.error,
            created_at=iso(job.created_at) or "",
            started_at=iso(job.started_at),
            finished_at=iso(job.finished_at),
            run_after=iso(job.run_after),
            spec=job.spec,
        )

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobPage(BaseModel):
    items: list[JobDocument]
    next_cursor: int | None = Field(description="pass as `cursor` for the next page; null: none")


class TrialPage(BaseModel):
    items: list[TrialRecord] = Field(description="trial records, by index")
    next_cursor: int | None = Field(description="pass as `cursor` for the next page; null: none")


class JobResult(RootModel[ResultModel]):
    """The result of a succeeded job, as its kind's result model says: a capacity result
    (capacity_bits, bits_per_param, best, curve, trials) or a sweep result (curves of
    points per precision)."""


class CurveItem(BaseModel):
    """One stored capacity result, as the dashboard plots it."""

    job_id: int
    model_kind: str
    model: ModelSpec
    params: int
    capacity_bits: float
    bits_per_param: float
    conv_bits_per_param: float | None
    best_n: int
    quality: SearchQuality | None = Field(
        description="how far to trust it: bracketed, best_finished, trials, budget_used, "
        "prior_n, verdict (null for results stored before it)"
    )
    curve: list[CurvePoint] = Field(description="n, accuracy, mutual_information_bits")
    seed: int
    device: str
    code_version: str
    created_at: str | None

    @classmethod
    def of(cls, stored: StoredResult) -> CurveItem:
        result = stored.result
        if not isinstance(result, CapacityResult):
            raise TypeError(f"job {stored.job_id} has no capacity result")
        return cls(
            job_id=stored.job_id,
            model_kind=stored.model_kind,
            model=stored.spec["model"],
            params=stored.params,
            capacity_bits=result.capacity_bits,
            bits_per_param=result.bits_per_param,
            conv_bits_per_param=result.conv_bits_per_param,
            best_n=result.best.n,
            quality=result.quality,
            curve=list(result.curve),
            seed=result.seed,
            device=result.device,
            code_version=stored.code_version,
            created_at=iso(stored.created_at),
        )


class CurvePage(BaseModel):
    items: list[CurveItem]
    next_cursor: int | None


class SweepItem(BaseModel):
    """One stored quantization sweep."""

    job_id: int
    model_kind: str
    model: ModelSpec
    params: int
    quantized_params: int
    regime: str
    tolerance: float
    precision_boundary: int | None
    curves: list[SweepCurve] = Field(description="per N: float accuracy and the points")
    code_version: str
    created_at: str | None

    @classmethod
    def of(cls, stored: StoredResult) -> SweepItem:
        result = stored.result
        if not isinstance(result, SweepResult):
            raise TypeError(f"job {stored.job_id} has no sweep result")
        return cls(
            job_id=stored.job_id,
            model_kind=stored.model_kind,
            model=stored.spec["model"],
            params=stored.params,
            quantized_params=result.quantized_params,
            regime=result.regime,
            tolerance=result.tolerance,
            precision_boundary=stored.precision_boundary,
            curves=list(result.curves),
            code_version=stored.code_version,
            created_at=iso(stored.created_at),
        )


class SweepPage(BaseModel):
    items: list[SweepItem]
    next_cursor: int | None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    database: str
    schema_at_head: bool
