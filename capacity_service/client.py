"""An HTTP client of the REST API (httpx): what `capacity submit/jobs/job/cancel --api`
use, and usable from scripts and CI."""

from __future__ import annotations

from typing import Any

import httpx


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
        spec: dict[str, Any],
        *,
        priority: int = 0,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, "spec": spec, "priority": priority}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return self._call("POST", "/v1/jobs", json=body)  # type: ignore[no-any-return]

    def jobs(self, **filters: Any) -> dict[str, Any]:
        """One page: {"items": [...], "next_cursor": ...}; filters state, kind,
        model_kind, cursor, limit."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)  # type: ignore[no-any-return]

    def job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")  # type: ignore[no-any-return]

    def retry(self, job_id: int) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/retry")  # type: ignore[no-any-return]

    def trials(self, job_id: int, cursor: int | None = None, limit: int = 100) -> dict[str, Any]:
        params = {"limit": limit} | ({"cursor": cursor} if cursor is not None else {})
        return self._call("GET", f"/v1/jobs/{job_id}/trials", params=params)  # type: ignore[no-any-return]

    def result(self, job_id: int) -> dict[str, Any] | None:
        """The result, or None while the job has none (queued, running, failed)."""
        try:
            return self._call("GET", f"/v1/jobs/{job_id}/result")  # type: ignore[no-any-return]
        except ApiError as error:
            if error.status == 409:
                return None
            raise

    def result_csv(self, job_id: int) -> str:
        text: str = self._call(
            "GET", f"/v1/jobs/{job_id}/result", params={"format": "csv"}, raw=True
        )
        return text

    def curves(self, **filters: Any) -> list[dict[str, Any]]:
        """Every stored capacity result matching the filters (all pages)."""
        return self._pages("/v1/curves", filters)

    def sweeps(self, **filters: Any) -> list[dict[str, Any]]:
        return self._pages("/v1/sweeps", filters)

    def _pages(self, path: str, filters: dict[str, Any]) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None} | {"limit": 500}
        items: list[dict[str, Any]] = []
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
