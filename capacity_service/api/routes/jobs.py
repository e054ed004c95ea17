"""/v1/jobs: submit, list, read, cancel; a job's trials and result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from capacity_service import jobkinds
from capacity_service.api.auth import READER, WRITER
from capacity_service.api.deps import settings_of, store_of
from capacity_service.api.limits import check_limits
from capacity_service.api.problems import (
    CONFLICT,
    INVALID_REQUEST,
    NOT_FOUND,
    FieldProblem,
    ProblemError,
    documented,
)
from capacity_service.api.schemas import (
    LARGEST_ID,
    Cursor,
    JobDocument,
    JobKindName,
    JobPage,
    JobRequest,
    JobResult,
    Limit,
    ModelKindName,
    TrialPage,
)
from capacity_service.reports.export import result_csv
from capacity_service.store.records import Job
from capacity_service.store.vocabulary import (
    JobNotFoundError,
    JobState,
    JobStateError,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobId = Annotated[int, Path(ge=1, le=LARGEST_ID, description="the job's id")]


def _job(request: Request, job_id: int) -> Job:
    try:
        return store_of(request).get(job_id)
    except JobNotFoundError:
        raise ProblemError(404, "Job not found", f"no job with id {job_id}; list jobs with "
                           "GET /v1/jobs", type=NOT_FOUND) from None  # fmt: skip


REPLAYED = {"model": JobDocument, "description": "the job its idempotency key created before"}
# OpenAPI links: where a client (or a stateful test) goes with the id of a new job
JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
    for name, operation in (("GetJob", "get_job"), ("CancelJob", "cancel_job"),
                            ("RetryJob", "retry_job"),
                            ("JobTrials", "job_trials"), ("JobResult", "job_result"))
}  # fmt: skip


@router.post(
    "",
    status_code=201,
    response_model=JobDocument,
    summary="Queue a capacity or quant_sweep job",
    operation_id="submit_job",
    dependencies=WRITER,
    responses={
        201: {"description": "the job, queued", "links": JOB_LINKS},
        200: REPLAYED,
        **documented(400, 401, 403, 409, 413, 422),
    },
)
def submit_job(
    request: Request,
    response: Response,
    job: Annotated[JobRequest, Body()],
) -> JobDocument:
    settings = settings_of(request)
    check_limits(job.kind, job.spec, settings)
    store = store_of(request)
    source = getattr(job.spec, "capacity_job", None)  # a sweep may name its capacity job
    if source is not None:
        _check_capacity_source(request, source)
    spec = job.spec.model_dump(mode="json")
    queued, is_new = store.submit(
        job.kind,
        spec,
        jobkinds.model_kind(job.spec),
        priority=job.priority,
        idempotency_key=job.idempotency_key,
        max_attempts=settings.max_attempts,
    )
    if not is_new and (queued.kind, queued.spec) != (job.kind, spec):
        raise ProblemError(409, "Idempotency key reused",
                           f"idempotency_key {job.idempotency_key!r} already queued job "
                           f"{queued.id} with another spec; use a new key for a new job",
                           type=CONFLICT)  # fmt: skip
    response.headers["Location"] = f"/v1/jobs/{queued.id}"
    if not is_new:
        response.status_code = 200
    return JobDocument.of(queued)


def _check_capacity_source(request: Request, job_id: int) -> None:
    try:
        source = store_of(request).get(job_id)
    except JobNotFoundError:
        source = None
    if source is None or source.kind != "capacity":
        problem = FieldProblem(field="spec.capacity_job",
                               message=f"no capacity job with id {job_id}; give the id of "
                                       "a capacity job, or capacity_n")  # fmt: skip
        raise ProblemError(422, "Invalid request", f"{problem.field}: {problem.message}",
                           type=INVALID_REQUEST, errors=[problem])  # fmt: skip


@router.get(
    "",
    response_model=JobPage,
    summary="List jobs, newest first",
    operation_id="list_jobs",
    dependencies=READER,
    responses=documented(401, 403, 422),
)
def list_jobs(
    request: Request,
    state: JobState | None = None,
    kind: JobKindName | None = None,
    model_kind: ModelKindName | None = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> JobPage:
    jobs = store_of(request).list_jobs(state=state, kind=kind, model_kind=model_kind,
                                       after_id=cursor, limit=limit)  # fmt: skip
    return JobPage(items=[JobDocument.of(job) for job in jobs],
                   next_cursor=jobs[-1].id if len(jobs) == limit else None)  # fmt: skip


@router.get(
    "/{job_id}",
    response_model=JobDocument,
    summary="A job: state, progress, attempts",
    operation_id="get_job",
    dependencies=READER,
    responses=documented(401, 403, 404, 422),
)
def get_job(request: Request, job_id: JobId) -> JobDocument:
    return JobDocument.of(_job(request, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobDocument,
    summary="Cancel a job (a running one stops at its next epoch end or precision)",
    operation_id="cancel_job",
    dependencies=WRITER,
    responses=documented(401, 403, 404, 409, 422),
)
def cancel_job(request: Request, job_id: JobId) -> JobDocument:
    return _move(request, job_id, store_of(request).cancel, "Job already finished",
                 "only queued or running jobs can be cancelled")  # fmt: skip


@router.post(
    "/{job_id}/retry",
    response_model=JobDocument,
    summary="Queue a failed or cancelled job again; it resumes from its stored trials",
    operation_id="retry_job",
    dependencies=WRITER,
    responses=documented(401, 403, 404, 409, 422),
)
def retry_job(request: Request, job_id: JobId) -> JobDocument:
    def hint(state: JobState) -> str:
        if state in (JobState.QUEUED, JobState.RUNNING):
            return " (cancel it first)"
        return " (its result stands; submit a new job to measure again)"

    return _move(request, job_id, store_of(request).retry, "Job cannot be retried",
                 "only failed or cancelled jobs can be retried", hint)  # fmt: skip


def _move(
    request: Request,
    job_id: int,
    move: Callable[[int], Job],
    title: str,
    allowed: str,
    hint: Callable[[JobState], str] = lambda _: "",
) -> JobDocument:
    """A job moved to another state by the store (cancel, retry): 404 for no such job,
    409 naming its state when the move is not allowed from there."""
    try:
        return JobDocument.of(move(job_id))
    except JobNotFoundError:
        _job(request, job_id)  # raises the 404 problem
        raise
    except JobStateError as error:
        raise ProblemError(409, title, f"{error}; {allowed}{hint(error.state)}",
                           type=CONFLICT) from None  # fmt: skip


@router.get(
    "/{job_id}/trials",
    response_model=TrialPage,
    summary="A job's finished trials",
    operation_id="job_trials",
    dependencies=READER,
    responses=documented(401, 403, 404, 422),
)
def job_trials(
    request: Request,
    job_id: JobId,
    cursor: Annotated[
        int | None, Query(ge=0, le=LARGEST_ID, description="next_cursor of the page before")
    ] = None,
    limit: Limit = 100,
) -> TrialPage:
    _job(request, job_id)
    after = -1 if cursor is None else cursor
    trials = store_of(request).trials(job_id, after_index=after, limit=limit)
    last = trials[-1].index if len(trials) == limit else None
    return TrialPage(items=trials, next_cursor=last)


@router.get(
    "/{job_id}/result",
    response_model=None,
    summary="The result of a succeeded job",
    operation_id="job_result",
    dependencies=READER,
    responses={
        200: {"model": JobResult, "description": "the result document"},
        **documented(401, 403, 404, 409, 422),
    },
)
def job_result(
    request: Request,
    job_id: JobId,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> Response:
    job = _job(request, job_id)
    result = store_of(request).result(job_id)
    if result is None:
        why = {
            JobState.QUEUED: "it is queued; poll GET /v1/jobs/{id} until it succeeds",
            JobState.RUNNING: "it is running; poll GET /v1/jobs/{id} until it succeeds",
            JobState.FAILED: f"it failed: {job.error}",
            JobState.CANCELLED: "it was cancelled",
        }.get(job.state, "it has none")
        raise ProblemError(409, "No result", f"job {job_id} has no result: "
                           + why.replace("{id}", str(job_id)), type=CONFLICT)  # fmt: skip
    if format == "csv":
        attachment = {"Content-Disposition": f'attachment; filename="job-{job_id}.csv"'}
        return Response(result_csv(result), media_type="text/csv", headers=attachment)
    return JSONResponse(result.model_dump(mode="json"))
