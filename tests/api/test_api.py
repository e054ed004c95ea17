"""The REST API over real HTTP, on SQLite and PostgreSQL: every endpoint, every refusal."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from capacity_service.api.auth import new_key
from capacity_service.specs import CurvePoint
from capacity_service.store.records import Job, ResultSummary
from capacity_service.store.vocabulary import JobState
from tests.api.conftest import Server
from tests.factories import capacity_result, sweep_result

TINY = {
    "model": {"kind": "fcdnn", "width": 6, "n_in": 10},
    "search": {"budget_trials": 4, "epochs": 20, "batch": 4, "batch_sizes": [8]},
}


def capacity_job(**extra: Any) -> dict[str, Any]:
    return {"kind": "capacity", "spec": TINY} | extra


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """A problem document (RFC 9457) with this status whose detail names `words`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["type"]
    for word in words:
        assert word in problem["detail"], problem
    return problem


def snapshot(server: Server) -> list[Job]:
    """Everything stored about jobs: bad requests must leave it as it was."""
    return server.store.list_jobs(limit=500)


def test_health_and_readiness(server: Server) -> None:
    with server.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz").json()
        assert ready["status"] == "ready" and ready["schema_at_head"] is True
        assert http.get("/docs").status_code == 200


def test_submit_read_list_and_page(server: Server) -> None:
    with server.client(server.key) as http:
        created = http.post("/v1/jobs", json=capacity_job(priority=3))
        assert created.status_code == 201
        job = created.json()
        assert job["state"] == "queued" and job["priority"] == 3 and job["model_kind"] == "fcdnn"
        assert created.headers["location"] == f"/v1/jobs/{job['id']}"
        # defaults are filled in: the stored spec is the whole, validated spec
        assert job["spec"]["search"]["estimator"] == "GP"
        assert http.get(f"/v1/jobs/{job['id']}").json() == job
        ids = [http.post("/v1/jobs", json=capacity_job()).json()["id"] for _ in range(3)]

        page = http.get("/v1/jobs", params={"limit": 2}).json()
        assert [j["id"] for j in page["items"]] == [ids[2], ids[1]]
        rest = http.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert rest["items"][0]["id"] == ids[0]
        queued = http.get(
            "/v1/jobs",
            params={"state": "queued", "kind": "capacity", "model_kind": "fcdnn", "limit": 500},
        ).json()
        assert {job["id"], *ids} <= {j["id"] for j in queued["items"]}
        assert http.get("/v1/jobs", params={"model_kind": "lstm"}).json()["items"] == []

        trials = http.get(f"/v1/jobs/{job['id']}/trials").json()
        assert trials == {"items": [], "next_cursor": None}
        assert_problem(http.get(f"/v1/jobs/{job['id']}/result"), 409, "queued")


def test_idempotent_submit(server: Server) -> None:
    with server.client(server.key) as http:
        first = http.post("/v1/jobs", json=capacity_job(idempotency_key="nightly-42"))
        again = http.post("/v1/jobs", json=capacity_job(idempotency_key="nightly-42"))
        assert first.status_code == 201 and again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        other = {"kind": "capacity", "spec": TINY | {"seed": 7}, "idempotency_key": "nightly-42"}
        assert_problem(http.post("/v1/jobs", json=other), 409, "nightly-42", "new key")


def test_cancel(server: Server) -> None:
    with server.client(server.key) as http:
        job = http.post("/v1/jobs", json=capacity_job()).json()
        cancelled = http.post(f"/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        before = snapshot(server)
        assert_problem(http.post(f"/v1/jobs/{job['id']}/cancel"), 409, "cancelled")
        assert_problem(http.post("/v1/jobs/999999/cancel"), 404, "999999")
        assert_problem(http.get(f"/v1/jobs/{job['id']}/result"), 409, "cancelled")
        assert snapshot(server) == before


def test_retry(server: Server) -> None:
    with server.client(server.key) as http:
        job = http.post("/v1/jobs", json=capacity_job()).json()
        before = snapshot(server)
        assert_problem(http.post(f"/v1/jobs/{job['id']}/retry"), 409, "is queued", "cancel it")
        assert_problem(http.post("/v1/jobs/999999/retry"), 404, "999999")
        assert snapshot(server) == before
        http.post(f"/v1/jobs/{job['id']}/cancel")
        retried = http.post(f"/v1/jobs/{job['id']}/retry")
        assert retried.status_code == 200
        assert retried.json()["state"] == "queued" and retried.json()["attempts"] == 0
        assert "run_after" in retried.json()
    with server.client() as anonymous:
        assert_problem(anonymous.post(f"/v1/jobs/{job['id']}/retry"), 401, "API key")


@pytest.mark.parametrize(
    ("body", "status", "words", "field"),
    [
        ('{"kind": "capacity", "spec": ', 400, ["not valid JSON"], None),
        ("[1, 2]", 422, ["valid dictionary"], None),
        ({"kind": "capacity"}, 422, ["spec: required"], "spec"),
        ({"kind": "capacit", "spec": TINY}, 422, ["capacity", "quant_sweep"], "kind"),
        (
            {"kind": "capacity", "spec": {"model": {"kind": "fcdnn", "width": "wide"}}},
            422,
            ["spec.model.width"],
            "spec.model.width",
        ),
        (
            {"kind": "capacity", "spec": {"model": {"kind": "fcdnn", "widht": 8}}},
            422,
            ["unknown field"],
            "spec.model.widht",
        ),
        ({"kind": "capacity", "spec": TINY, "colour": "red"}, 422, ["unknown field"], "colour"),
        (
            {"kind": "capacity", "spec": {"model": {"kind": "fcdnn", "width": 0}}},
            422,
            ["greater than or equal to 1"],
            "spec.model.width",
        ),
        (
            {"kind": "capacity", "spec": {"model": {"kind": "transformer"}}},
            422,
            ["fcdnn"],
            "spec.model.kind",
        ),
        (
            {"kind": "quant_sweep", "spec": {"model": {"kind": "fcdnn"}, "bits": [4, 8]}},
            422,
            ["fall"],
            "spec.bits",
        ),
        ({"kind": "capacity", "spec": TINY, "priority": 10**6}, 422, ["priority"], "priority"),
        (
            {"kind": "capacity", "spec": TINY, "idempotency_key": "has space"},
            422,
            ["idempotency_key"],
            "idempotency_key",
        ),
        (
            '{"kind": "capacity", "spec": {"model": {"kind": "fcdnn"}, "search": '
            '{"budget_seconds": Infinity}}}',
            422,
            ["finite"],
            "spec.search.budget_seconds",
        ),
        (
            {
                "kind": "quant_sweep",
                "spec": {"model": {"kind": "fcdnn"}, "regime": "half", "capacity_job": 987654},
            },
            422,
            ["no capacity job with id 987654"],
            "spec.capacity_job",
        ),
    ],
)
def test_bad_submissions_are_problems_and_store_nothing(
    server: Server, body: Any, status: int, words: list[str], field: str | None
) -> None:
    before = snapshot(server)
    with server.client(server.key) as http:
        if isinstance(body, str):
            sent = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        else:
            sent = http.post("/v1/jobs", json=body)
    problem = assert_problem(sent, status, *words)
    if field is not None:
        assert field in [error["field"] for error in problem["errors"]], problem
    assert snapshot(server) == before


@pytest.mark.parametrize("open_close", [('{"a":', "}"), ("[", "]")])
def test_a_body_nested_too_deeply_to_parse_is_malformed_json(
    server: Server, open_close: tuple[str, str]
) -> None:
    opening, closing = open_close
    body = opening * 6000 + "1" + closing * 6000  # under the size limit, past the parser's
    before = snapshot(server)
    with server.client(server.key) as http:
        sent = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(sent, 400, "nested too deeply", "levels")
    assert problem["type"] == "/problems/malformed-json" and problem["title"] == "Malformed JSON"
    assert snapshot(server) == before


def test_limits_name_the_limit(server: Server) -> None:
    huge = {"kind": "capacity", "spec": {"model": {"kind": "fcdnn", "width": 4096, "depth": 4}}}
    long = {"kind": "capacity", "spec": TINY | {"search": {"budget_trials": 5000}}}
    with server.client(server.key) as http:
        problem = assert_problem(http.post("/v1/jobs", json=huge), 422, "CAPACITY_MAX_PARAMS")
        assert problem["type"] == "/problems/limit-exceeded"
        assert_problem(
            http.post("/v1/jobs", json=long),
            422,
            "spec.search.budget_trials",
            "CAPACITY_MAX_TRIALS",
        )


def test_oversized_bodies_are_413(server: Server) -> None:
    padding = {"kind": "capacity", "spec": TINY, "idempotency_key": "x" * 100_000}
    before = snapshot(server)
    with server.client(server.key) as http:
        assert_problem(http.post("/v1/jobs", json=padding), 413, "CAPACITY_MAX_BODY_BYTES")

        def chunks() -> Any:  # no Content-Length: the server counts the bytes
            yield b'{"kind": "capacity", "spec": {}, "idempotency_key": "'
            for _ in range(100):
                yield b"y" * 1_000
            yield b'"}'

        streamed = http.post(
            "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_problem(streamed, 413, "over the limit")
    assert snapshot(server) == before


def test_keys(server: Server) -> None:
    _, revoked = new_key(server.store, "departed")
    server.store.revoke_api_keys("departed")
    before = snapshot(server)
    with server.client() as http:
        missing = assert_problem(http.post("/v1/jobs", json=capacity_job()), 401, "Bearer")
        assert missing["type"] == "/problems/unauthorized"
        assert http.post("/v1/jobs", json=capacity_job()).headers["www-authenticate"]
        assert_problem(http.post("/v1/jobs/1/cancel"), 401, "API key")
        assert http.get("/v1/jobs").status_code == 200  # reads are open by default
    with server.client("cap_not-a-key") as http:
        assert_problem(http.post("/v1/jobs", json=capacity_job()), 401, "not known")
    with server.client(revoked) as http:
        assert_problem(http.post("/v1/jobs", json=capacity_job()), 403, "departed")
    assert snapshot(server) == before
    assert server.key not in server.logs() and revoked not in server.logs()


def test_unknown_ids_routes_and_methods(server: Server) -> None:
    with server.client(server.key) as http:
        assert_problem(http.get("/v1/jobs/424242"), 404, "no job with id 424242")
        assert_problem(http.get("/v1/jobs/424242/trials"), 404, "424242")
        assert_problem(http.get("/v1/jobs/424242/result"), 404, "424242")
        assert_problem(http.get("/v1/jobs/0"), 422, "job_id")
        assert_problem(http.get("/v1/jobs/99999999999999999999"), 422, "job_id")
        assert_problem(http.get("/v1/jobs/abc"), 422, "job_id")
        assert_problem(http.get("/v1/jobs", params={"state": "done"}), 422, "state")
        assert_problem(http.get("/v1/jobs", params={"limit": 0}), 422, "limit")
        assert_problem(http.get("/v1/nothing-here"), 404, "/docs")
        assert_problem(http.delete("/v1/jobs/1"), 405, "DELETE")
        assert_problem(
            http.get("/v1/curves", params={"min_params": 9, "max_params": 3}), 422, "min_params"
        )


def finish(server: Server, kind: str, spec: dict[str, Any], result: Any, **columns: Any) -> int:
    """A job that a worker has finished (the worker itself is tested in test_end_to_end)."""
    job, _ = server.store.submit(kind, spec, spec["model"]["kind"], priority=1000)
    claimed = server.store.claim("test-worker", 60)
    assert claimed is not None and claimed.id == job.id
    summary = ResultSummary(result=result, params=result.params, code_version="0.1.0", **columns)
    server.store.finish(job.id, "test-worker", JobState.SUCCEEDED, result=summary)
    return job.id


def test_curves_and_sweeps_filter_stored_results(server: Server) -> None:
    lstm = {"model": {"kind": "lstm", "hidden": 32, "n_in": 32, "steps": 5}}
    curve = [{"n": 20_000, "accuracy": 0.99, "mutual_information_bits": 18_400.0}]
    result = capacity_result(8_386, 3.7, [CurvePoint.model_validate(p) for p in curve])
    job_id = finish(server, "capacity", lstm, result, capacity_bits=31_000.0, bits_per_param=3.7)
    swept = sweep_result(8_386, 20_000, precision_boundary=10, quantized_params=8_192)
    sweep_id = finish(server, "quant_sweep", lstm | {"n": 20_000}, swept, precision_boundary=10)
    with server.client() as http:
        found = http.get("/v1/curves", params={"model_kind": "lstm"}).json()["items"]
        assert [item["job_id"] for item in found] == [job_id]
        item = found[0]
        assert item["bits_per_param"] == 3.7 and item["params"] == 8_386
        assert item["curve"] == curve and item["best_n"] == 20_000
        assert item["model"] == lstm["model"]
        small = http.get("/v1/curves", params={"model_kind": "lstm", "max_params": 8_000})
        assert small.json()["items"] == []
        sweeps = http.get("/v1/sweeps", params={"min_params": 8_000}).json()["items"]
        assert [s["job_id"] for s in sweeps] == [sweep_id]
        assert sweeps[0]["precision_boundary"] == 10 and sweeps[0]["quantized_params"] == 8_192


def test_a_stored_result_of_an_older_shape_is_a_problem_naming_the_job(server: Server) -> None:
    from capacity_service.store.models import ResultRow

    model = {"model": {"kind": "fcdnn", "width": 4}}
    job_id = finish(server, "capacity", model, capacity_result(26, 2.0), capacity_bits=52.0)
    with server.store.session() as session:  # as an older version might have written it
        session.get_one(ResultRow, job_id).document = {"capacity": 52.0}
    with server.client() as http:
        problem = assert_problem(http.get(f"/v1/jobs/{job_id}/result"), 500, f"job {job_id}")
        assert "run the job again" in problem["detail"]
        assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"  # nothing lost
