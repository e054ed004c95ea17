"""An HTTP client of the REST API (httpx): what `capacity submit/jobs/job/cancel --api`
use, and usable from scripts and CI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:  # loaded when a request needs them: importing ApiError stays quick
    from capacity_service.api.schemas import CurveItem, JobDocument, JobPage, SweepItem, TrialPage

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """The API answered with an error (a problem document), or could not be reached
    (status 0)."""

    def __init__(self, status: int, message: str, problem: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class ApiClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(
        self,
        kind: str,
        spec: dict[str, object],
        *,
        priority: int = 0,
        idempotency_key: str | None = None,
    ) -> JobDocument:
        from capacity_service.api.schemas import JobDocument

        body: dict[str, object] = {"kind": kind, "spec": spec, "priority": priority}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return _read(JobDocument, self._call("POST", "/v1/jobs", json=body))

    def jobs(self, **filters: Any) -> JobPage:
        """One page; filters state, kind, model_kind, cursor, limit."""
        from capacity_service.api.schemas import JobPage

        params = {k: v for k, v in filters.items() if v is not None}
        return _read(JobPage, self._call("GET", "/v1/jobs", params=params))

    def job(self, job_id: int) -> JobDocument:
        from capacity_service.api.schemas import JobDocument

        return _read(JobDocument, self._call("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: int) -> JobDocument:
        from capacity_service.api.schemas import JobDocument

        return _read(JobDocument, self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def retry(self, job_id: int) -> JobDocument:
        from capacity_service.api.schemas import JobDocument

        return _read(JobDocument, self._call("POST", f"/v1/jobs/{job_id}/retry"))

    def trials(self, job_id: int, cursor: int | None = None, limit: int = 100) -> TrialPage:
        from capacity_service.api.schemas import TrialPage

        params = {"limit": limit} | ({"cursor": cursor} if cursor is not None else {})
        return _read(TrialPage, self._call("GET", f"/v1/jobs/{job_id}/trials", params=params))

    def result(self, job_id: int) -> BaseModel | None:
        """The result as its kind's result model, or None while the job has none (queued,
        running, failed)."""
        from capacity_service.api.schemas import JobResult

        try:
            document = self._call("GET", f"/v1/jobs/{job_id}/result")
        except ApiError as error:
            if error.status == 409:
                return None
            raise
        return _read(JobResult, document).root

    def result_csv(self, job_id: int) -> str:
        text: str = self._call(
            "GET", f"/v1/jobs/{job_id}/result", params={"format": "csv"}, raw=True
        )
        return text

    def curves(self, **filters: Any) -> list[CurveItem]:
        """Every stored capacity result matching the filters (all pages)."""
        from capacity_service.api.schemas import CurveItem

        return [_read(CurveItem, item) for item in self._pages("/v1/curves", filters)]

    def sweeps(self, **filters: Any) -> list[SweepItem]:
        from capacity_service.api.schemas import SweepItem

        return [_read(SweepItem, item) for item in self._pages("/v1/sweeps", filters)]

    def _pages(self, path: str, filters: dict[str, Any]) -> list[Any]:
        params = {k: v for k, v in filters.items() if v is not None} | {"limit": 500}
        items: list[Any] = []
        while True:
            page = self._call("GET", path, params=params)
            items += page["items"]
            if page["next_cursor"] is None:
                return items
            params["cursor"] = page["next_cursor"]

    def _call(self, method: str, path: str, raw: bool = False, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ApiError(0, f"cannot reach the API at {self.base_url}: {error}") from None
        if response.is_success:
            return response.text if raw else response.json()
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        if not isinstance(problem, dict):
            problem = {}
        title = problem.get("title", response.reason_phrase)
        detail = problem.get("detail", response.text[:200])
        raise ApiError(response.status_code, f"HTTP {response.status_code} {title}: {detail}",
                       problem)  # fmt: skip


def _read(model: type[M], document: Any) -> M:
    """`document` as `model`; an ApiError saying so when the API answered with a shape
    this client does not know (a server of another version)."""
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise ApiError(200, f"the API answered with a {model.__name__} this client cannot "
                       f"read ({error.error_count()} problems, first: {error.errors()[0]['msg']}); "
                       "use a client of the server's version") from None  # fmt: skip
