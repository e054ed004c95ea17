"""/v1/curves and /v1/sweeps: stored results across jobs, for the dashboard and for
comparisons (filter by model kind and parameter count)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from capacity_service.api.auth import READER
from capacity_service.api.deps import store_of
from capacity_service.api.problems import INVALID_REQUEST, FieldProblem, ProblemError, documented
from capacity_service.api.schemas import (
    LARGEST_ID,
    Cursor,
    CurveItem,
    CurvePage,
    Limit,
    ModelKindName,
    SweepItem,
    SweepPage,
)
from capacity_service.store.records import StoredResult

router = APIRouter(prefix="/v1", tags=["results"])
Params = Annotated[int | None, Query(ge=0, le=LARGEST_ID)]


@dataclass(frozen=True)
class ResultQuery:
    """The filters and page of both result lists."""

    model_kind: str | None
    min_params: int | None
    max_params: int | None
    cursor: int | None
    limit: int

    def run(self, request: Request, kind: str) -> tuple[list[StoredResult], int | None]:
        """The page of stored results of `kind`, and the cursor of the next page."""
        found = store_of(request).results(
            kind, model_kind=self.model_kind, min_params=self.min_params,
            max_params=self.max_params, after_job_id=self.cursor, limit=self.limit,
        )  # fmt: skip
        return found, found[-1].job_id if len(found) == self.limit else None


def result_query(
    model_kind: ModelKindName | None = None,
    min_params: Params = None,
    max_params: Params = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> ResultQuery:
    if min_params is not None and max_params is not None and min_params > max_params:
        problem = FieldProblem(field="min_params", message=f"{min_params} is above max_params "
                               f"{max_params}; give min_params <= max_params")  # fmt: skip
        raise ProblemError(422, "Invalid request", f"{problem.field}: {problem.message}",
                           type=INVALID_REQUEST, errors=[problem])  # fmt: skip
    return ResultQuery(model_kind, min_params, max_params, cursor, limit)


ResultFilters = Annotated[ResultQuery, Depends(result_query)]


@router.get(
    "/curves",
    response_model=CurvePage,
    summary="Stored capacity results",
    operation_id="curves",
    dependencies=READER,
    responses=documented(401, 403, 422),
)
def curves(request: Request, query: ResultFilters) -> CurvePage:
    found, next_cursor = query.run(request, "capacity")
    return CurvePage(items=[CurveItem.of(stored) for stored in found], next_cursor=next_cursor)


@router.get(
    "/sweeps",
    response_model=SweepPage,
    summary="Stored quantization sweeps",
    operation_id="sweeps",
    dependencies=READER,
    responses=documented(401, 403, 422),
)
def sweeps(request: Request, query: ResultFilters) -> SweepPage:
    found, next_cursor = query.run(request, "quant_sweep")
    return SweepPage(items=[SweepItem.of(stored) for stored in found], next_cursor=next_cursor)
