"""Errors as RFC 9457 problem details (`application/problem+json`).

Every error the API returns goes through `problem_response`, so each one has a type, a
title, the status, and a detail that says what to change.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from capacity_service import jobkinds
from capacity_service.specs import MODEL_KINDS
from capacity_service.store.vocabulary import StaleDocumentError, StoreError

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"

# Problem types, relative URIs as RFC 9457 allows; the README lists them.
INVALID_REQUEST = "/problems/invalid-request"
MALFORMED_JSON = "/problems/malformed-json"
LIMIT_EXCEEDED = "/problems/limit-exceeded"
NOT_FOUND = "/problems/not-found"
CONFLICT = "/problems/conflict"
UNAUTHORIZED = "/problems/unauthorized"
FORBIDDEN = "/problems/forbidden"
TOO_LARGE = "/problems/body-too-large"
UNAVAILABLE = "/problems/unavailable"


class FieldProblem(BaseModel):
    field: str = Field(description="dotted path of the field, e.g. spec.model.width")
    message: str = Field(description="what is wrong and what to give instead")


class Problem(BaseModel):
    """An error (RFC 9457)."""

    type: str = Field("about:blank", description="URI of the kind of problem")
    title: str = Field(description="short summary of the kind of problem")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong here and what to change")
    instance: str | None = Field(None, description="the request path")
    errors: list[FieldProblem] | None = Field(None, description="invalid fields, if any")


class ProblemError(Exception):
    """Raised by routes and dependencies; answered as a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(type=type, title=title, status=status, detail=detail,
                               errors=errors)  # fmt: skip
        self.headers = headers


def problem_response(
    problem: Problem, instance: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    document = problem.model_copy(update={"instance": instance}).model_dump(exclude_none=True)
    return JSONResponse(document, status_code=problem.status, media_type=MEDIA_TYPE,
                        headers=headers)  # fmt: skip


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with."""
    return {
        status: {"model": Problem, "content": {MEDIA_TYPE: {}}, "description": _TITLES[status]}
        for status in statuses
    }


_TITLES = {
    400: "Malformed request",
    401: "API key missing or unknown",
    403: "API key revoked",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the job's state",
    413: "Request body too large",
    422: "Invalid request",
    500: "Internal error",
    503: "Database unavailable",
}


def field_path(location: tuple[int | str, ...]) -> str:
    """`spec.model.width` from pydantic's ('body', 'capacity', 'spec', 'model', 'fcdnn',
    'width'): the request part and the tags of the tagged unions are not fields."""
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    if parts and parts[0] in jobkinds.names():
        parts = parts[1:]
    kept: list[str] = []
    for part in parts:
        if kept and kept[-1] == "model" and part in MODEL_KINDS:
            continue
        kept.append(part)
    return ".".join(kept)


def _describe(error: dict[str, Any]) -> FieldProblem:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field; remove it (check the spelling and the model kind)"
    elif error["type"] == "missing":
        message = "required; give a value"
    where = field_path(tuple(error["loc"]))
    if error["type"] == "union_tag_invalid":
        where = ".".join(filter(None, (where, "kind")))
    return FieldProblem(field=where or "body", message=message)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own Allow header names
    only the first route that matched the path)."""
    allowed: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            allowed |= set(getattr(route, "methods", None) or ())
    return sorted(allowed - {"HEAD"})


def _too_deep() -> str:
    # the parser recurses per level: it stops near the interpreter's recursion limit
    return (f"the request body is nested too deeply to parse: arrays and objects may nest "
            f"at most about {sys.getrecursionlimit():,} levels (Python's recursion limit), "
            "and a job needs fewer than 10; send one JSON object")  # fmt: skip


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, error: ProblemError) -> JSONResponse:
        return problem_response(error.problem, request.url.path, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = list(error.errors())
        malformed = [e for e in errors if e["type"] == "json_invalid"]
        if malformed:
            reason = malformed[0].get("ctx", {}).get("error", "not valid JSON")
            problem = Problem(type=MALFORMED_JSON, title="Malformed JSON", status=400,
                              detail=f"the request body is not valid JSON ({reason}); "
                                     "send one JSON object")  # fmt: skip
            return problem_response(problem, request.url.path)
        fields = [_describe(e) for e in errors]
        detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
        problem = Problem(type=INVALID_REQUEST, title="Invalid request", status=422,
                          detail=detail, errors=fields)  # fmt: skip
        return problem_response(problem, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        title = _TITLES.get(error.status_code, "Error")
        detail = str(error.detail)
        if error.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint {request.url.path}; see /docs for the API"
        headers = getattr(error, "headers", None)
        if error.status_code == 405:
            allowed = _allowed_methods(request)
            detail = (f"{request.method} is not allowed on {request.url.path}; use "
                      f"{' or '.join(allowed)} (see /docs)")  # fmt: skip
            headers = {"Allow": ", ".join(allowed)}
        kind = {404: NOT_FOUND, 413: TOO_LARGE}.get(error.status_code, "about:blank")
        if error.status_code == 400 and isinstance(error.__cause__, RecursionError):
            # FastAPI answers a body its JSON parser cannot descend into with a bare 400
            kind, title, detail = MALFORMED_JSON, "Malformed JSON", _too_deep()
        problem = Problem(type=kind, title=title, status=error.status_code,
                          detail=detail)  # fmt: skip
        return problem_response(problem, request.url.path, headers)

    @app.exception_handler(StoreError)
    async def _store(request: Request, error: StoreError) -> JSONResponse:
        log.error("database error on %s %s: %s", request.method, request.url.path, error)
        problem = Problem(type=UNAVAILABLE, title="Database unavailable", status=503,
                          detail="the job store did not answer; retry shortly")  # fmt: skip
        return problem_response(problem, request.url.path, {"Retry-After": "5"})

    @app.exception_handler(StaleDocumentError)
    async def _stale(request: Request, error: StaleDocumentError) -> JSONResponse:
        log.error("unreadable stored document on %s: %s", request.url.path, error)
        problem = Problem(title="Stored document unreadable", status=500, detail=str(error))
        return problem_response(problem, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        problem = Problem(title="Internal error", status=500,
                          detail="the server failed on this request; it is logged")  # fmt: skip
        return problem_response(problem, request.url.path)
