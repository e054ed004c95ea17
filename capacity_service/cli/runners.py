"""How `regress` and `experiments` run a job: here (the science, in this process) or
through the REST API (submit, poll, fetch the result). Each returns a function
(kind, spec) -> result document."""

from __future__ import annotations

import time
from typing import Any

from capacity_service.regress import Runner


def local_runner(device: str) -> Runner:
    from capacity_service.science.search import search_capacity
    from capacity_service.science.sweep import sweep
    from capacity_service.specs import CapacitySpec, SweepSpec

    def run(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        spec = spec | {"device": device}
        if kind == "capacity":
            return search_capacity(CapacitySpec.model_validate(spec)).model_dump(mode="json")
        return sweep(SweepSpec.model_validate(spec)).model_dump(mode="json")

    return run


def api_runner(url: str) -> Runner:
    from capacity_service.client import ApiClient, ApiError
    from capacity_service.settings import Settings

    client = ApiClient(url, Settings().api_key)

    def run(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        job = client.submit(kind, spec)
        while job["state"] in ("queued", "running"):
            time.sleep(1.0)
            job = client.job(job["id"])
        result = client.result(job["id"]) if job["state"] == "succeeded" else None
        if result is None:
            raise ApiError(1, f"job {job['id']} {job['state']}: {job.get('error')}")
        return result

    return run
