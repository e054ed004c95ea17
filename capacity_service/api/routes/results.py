"""/v1/curves and /v1/sweeps: stored results across jobs, for the dashboard and for
comparisons (filter by model kind and parameter count)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from capacity_service.api.auth import READER
from capacity_service.api.deps import store_of
from capacity_service.api.problems import INVALID_REQUEST, FieldProblem, ProblemError, documented
from capacity_service.api.schemas import (
    LARGEST_ID,
    Cursor,
    CurvePage,
    Limit,
    ModelKindName,
    SweepPage,
)
from capacity_service.store.queries import StoredResult

router = APIRouter(prefix="/v1", tags=["results"])
Params = Annotated[int | None, Query(ge=0, le=LARGEST_ID)]


def _results(
    request: Request, kind: str, model_kind: str | None, min_params: int | None,
    max_params: int | None, cursor: int | None, limit: int,
) -> tuple[list[StoredResult], int | None]:  # fmt: skip
    if min_params is not None and max_params is not None and min_params > max_params:
        problem = FieldProblem(field="min_params", message=f"{min_params} is above max_params "
                               f"{max_params}; give min_params <= max_params")  # fmt: skip
        raise ProblemError(422, "Invalid request", f"{problem.field}: {problem.message}",
                           type=INVALID_REQUEST, errors=[problem])  # fmt: skip
    found = store_of(request).results(kind, model_kind=model_kind, min_params=min_params,
                                      max_params=max_params, after_job_id=cursor,
                                      limit=limit)  # fmt: skip
    return found, found[-1].job_id if len(found) == limit else None


@router.get(
    "/curves",
    response_model=CurvePage,
    summary="Stored capacity results",
    operation_id="curves",
    dependencies=READER,
    responses=documented(401, 403, 422),
)
def curves(
    request: Request,
    model_kind: ModelKindName | None = None,
    min_params: Params = None,
    max_params: Params = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    found, next_cursor = _results(request, "capacity", model_kind, min_params, max_params,
                                  cursor, limit)  # fmt: skip
    items = [stored.curve_item() for stored in found]
    return {"items": items, "next_cursor": next_cursor}


@router.get(
    "/sweeps",
    response_model=SweepPage,
    summary="Stored quantization sweeps",
    operation_id="sweeps",
    dependencies=READER,
    responses=documented(401, 403, 422),
)
def sweeps(
    request: Request,
    model_kind: ModelKindName | None = None,
    min_params: Params = None,
    max_params: Params = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    found, next_cursor = _results(request, "quant_sweep", model_kind, min_params, max_params,
                                  cursor, limit)  # fmt: skip
    items = [stored.sweep_item() for stored in found]
    return {"items": items, "next_cursor": next_cursor}
