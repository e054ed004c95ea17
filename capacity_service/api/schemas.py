"""Request and response bodies of the API, and the documents the CLI prints: a job, a
page of jobs or trials, a stored capacity (`CurveItem`) or sweep (`SweepItem`). Job specs
and results are the models the job kinds registry (`capacity_service.jobkinds`) names;
the request union, the kind names and the result union are built from it when this
module is imported."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, Union

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, create_model

from capacity_service import jobkinds
from capacity_service.specs import (
    CapacityResult,
    CapacitySpec,
    CurvePoint,
    Int,
    ModelSpec,
    Progress,
    SearchQuality,
    SweepCurve,
    SweepResult,
    SweepSpec,
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


def _stamp(moment: object) -> object:
    return iso(moment) if isinstance(moment, datetime) else moment


# a moment the store keeps as a datetime, in JSON as ISO 8601 in UTC
Stamp = Annotated[str, BeforeValidator(_stamp)]


class JobDocument(BaseModel):
    """A job as stored: what `capacity job ID --json` prints too."""

    id: int
    # any stored kind: a job of a kind this process has not loaded (a plugin the workers
    # load) is still listed
    kind: str = Field(description="the job kind (see jobkinds)")
    state: JobState
    model_kind: str = Field(description="the kind of network: fcdnn, cnn, lstm, gru or rnn")
    priority: int = Field(description="a higher priority is claimed first")
    idempotency_key: str | None = Field(description="submitting again with it returns this job")
    attempts: int = Field(description="claims by a worker (waits for a dependency not counted)")
    max_attempts: int = Field(description="a lost lease or transient failure is retried until then")
    worker_id: str | None = Field(description="the worker that holds it (null when none does)")
    cancel_requested: bool = Field(description="the worker stops it at its next epoch end")
    progress: Progress = Field(description="stage, trials_done, best_bits while running")
    error: str | None = Field(description="why it failed, or why a retry waits")
    created_at: Stamp
    started_at: Stamp | None
    finished_at: Stamp | None
    run_after: Stamp | None = Field(
        None, description="a job retried after a transient failure waits until then"
    )
    spec: dict[str, object] = Field(description="as submitted (the kind's spec)")

    @classmethod
    def of(cls, job: Job) -> JobDocument:
        return cls.model_validate(job, from_attributes=True)

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


class StoredItem(BaseModel):
    """What a listing says of every stored result: its job, the model it ran, and when."""

    job_id: int
    model_kind: str
    model: ModelSpec
    params: int
    code_version: str
    created_at: str | None

    @classmethod
    def _of(cls, stored: StoredResult, **fields: object) -> Self:
        spec = stored.spec
        if not isinstance(spec, CapacitySpec | SweepSpec):
            raise TypeError(f"job {stored.job_id} ran no capacity or sweep spec")
        common = {"job_id": stored.job_id, "model_kind": stored.model_kind, "model": spec.model,
                  "params": stored.params, "code_version": stored.code_version,
                  "created_at": iso(stored.created_at)}  # fmt: skip
        return cls.model_validate(common | fields)


class CurveItem(StoredItem):
    """One stored capacity result, as the dashboard plots it."""

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

    @classmethod
    def of(cls, stored: StoredResult) -> CurveItem:
        result = stored.result
        if not isinstance(result, CapacityResult):
            raise TypeError(f"job {stored.job_id} has no capacity result")
        return cls._of(
            stored,
            capacity_bits=result.capacity_bits,
            bits_per_param=result.bits_per_param,
            conv_bits_per_param=result.conv_bits_per_param,
            best_n=result.best.n,
            quality=result.quality,
            curve=result.curve,
            seed=result.seed,
            device=result.device,
        )


class CurvePage(BaseModel):
    items: list[CurveItem]
    next_cursor: int | None


class SweepItem(StoredItem):
    """One stored quantization sweep."""

    quantized_params: int
    regime: str
    tolerance: float
    precision_boundary: int | None
    curves: list[SweepCurve] = Field(description="per N: float accuracy and the points")

    @classmethod
    def of(cls, stored: StoredResult) -> SweepItem:
        result = stored.result
        if not isinstance(result, SweepResult):
            raise TypeError(f"job {stored.job_id} has no sweep result")
        return cls._of(stored, quantized_params=result.quantized_params, regime=result.regime,
                       tolerance=result.tolerance, precision_boundary=stored.precision_boundary,
                       curves=result.curves)  # fmt: skip


class SweepPage(BaseModel):
    items: list[SweepItem]
    next_cursor: int | None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    database: str
    schema_at_head: bool
