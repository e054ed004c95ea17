"""GET /metrics of a real API server (`capacity serve` with JSON logs) on a real database:
the job store's gauges, requests by route template, and the server's log lines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import select

from capacity_service.api import create_app
from capacity_service.api.auth import new_key
from capacity_service.settings import Settings
from capacity_service.store.db import database_now_sql
from capacity_service.store.migrate import upgrade
from capacity_service.store.models import JobRow
from capacity_service.store.queries import Store
from tests.api.conftest import Server, start_server, stop
from tests.factories import trial

TINY = {
    "model": {"kind": "fcdnn", "width": 6, "n_in": 10},
    "search": {"budget_trials": 4, "epochs": 20, "batch": 4, "batch_sizes": [8]},
}
SWEEP = {"model": {"kind": "fcdnn", "width": 6, "n_in": 10}, "n": 100, "bits": [8, 4]}
LOG_KEYS = {"time", "level", "logger", "message"}


@pytest.fixture(scope="module")
def server(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`capacity serve` with CAPACITY_LOG_FORMAT=json, on each backend."""
    log = tmp_path_factory.mktemp("metrics") / "server.log"
    store = Store(backend_url)
    _, key = new_key(store, "metrics")
    process, url = start_server(backend_url, log, CAPACITY_LOG_FORMAT="json")
    yield Server(url=url, database_url=backend_url, key=key, store=store, process=process, log=log)
    stop(process)
    store.close()


def scrape(client: httpx.Client | TestClient) -> list[Sample]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = text_string_to_metric_families(response.text)
    return [sample for family in families for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample named `name` whose labels include `labels`; 0 when there is none."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_job_store_gauges_are_read_from_the_database(server: Server) -> None:
    auth = {"Authorization": f"Bearer {server.key}"}
    with server.client() as client:
        ids = [client.post("/v1/jobs", headers=auth, json=body).json()["id"] for body in (
            {"kind": "capacity", "spec": TINY},
            {"kind": "capacity", "spec": TINY | {"seed": 1}},
            {"kind": "quant_sweep", "spec": SWEEP},
        )]  # fmt: skip
        store = server.store
        with store.session() as session:  # the first submitted an hour ago, the sweep backed off
            session.get_one(JobRow, ids[0]).created_at = datetime.now(UTC) - timedelta(hours=1)
            now = float(session.execute(select(database_now_sql(store.engine))).scalar_one())
            session.get_one(JobRow, ids[2]).run_after = now + 86_400
        store.register_worker("metrics-test-worker", "host-a", "cpu")
        for index in range(3):
            store.record_trial(ids[0], trial(index))

        samples = scrape(client)

    assert value(samples, "capacity_store_up") == 1
    assert value(samples, "capacity_jobs", state="queued", kind="capacity") == 2
    assert value(samples, "capacity_jobs", state="queued", kind="quant_sweep") == 1
    for state in ("running", "succeeded", "failed", "cancelled"):  # present, at zero
        assert [s for s in samples if s.name == "capacity_jobs" and s.labels["state"] == state]
        assert value(samples, "capacity_jobs", state=state, kind="capacity") == 0
    assert value(samples, "capacity_queue_depth") == 2  # the backed-off sweep is not claimable
    assert 3600 <= value(samples, "capacity_queue_oldest_age_seconds") < 3600 + 600
    seen = value(samples, "capacity_worker_last_seen_seconds", worker_id="metrics-test-worker",
                 hostname="host-a", device="cpu")  # fmt: skip
    assert 0 <= seen < 600
    assert value(samples, "capacity_trials_stored_total") == 3


def test_requests_are_counted_by_route_template_and_status(server: Server) -> None:
    auth = {"Authorization": f"Bearer {server.key}"}
    with server.client() as client:
        before = scrape(client)
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/jobs/987654").status_code == 404
        assert client.get("/v1/jobs/not-a-number").status_code == 422
        assert client.get("/no/such/path").status_code == 404
        assert client.post("/v1/jobs", headers=auth, json={"kind": "x"}).status_code == 422
        after = scrape(client)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "capacity_http_requests_total"
    assert added(requests, method="GET", route="/healthz", status="200") == 2
    assert added(requests, method="GET", route="/v1/jobs/{job_id}", status="404") == 1
    assert added(requests, method="GET", route="/v1/jobs/{job_id}", status="422") == 1
    assert added(requests, method="GET", route="unmatched", status="404") == 1
    assert added(requests, method="POST", route="/v1/jobs", status="422") == 1
    latency = "capacity_http_request_duration_seconds"
    assert added(f"{latency}_count", method="GET", route="/v1/jobs/{job_id}") == 2
    assert added(f"{latency}_bucket", method="GET", route="/healthz", le="+Inf") == 2
    assert added(f"{latency}_sum", method="GET", route="/healthz") > 0
    routes = {s.labels["route"] for s in after if s.name == requests}
    assert not any("987654" in route or "not-a-number" in route for route in routes), routes
    assert "/metrics" not in routes  # scrapes do not count themselves


def test_the_server_logs_one_json_object_per_line(server: Server) -> None:
    with server.client() as client:
        assert client.get("/healthz", params={"probe": "log"}).status_code == 200

    def lines() -> list[dict[str, object]]:
        return [json.loads(line) for line in server.logs().splitlines() if line.strip()]

    def logged() -> bool:  # uvicorn writes the access line once the response is sent
        return any(line.get("path") == "/healthz?probe=log" for line in lines())

    wait_for(logged)
    for line in lines():
        assert line.keys() >= LOG_KEYS, line
    access = next(line for line in lines() if line.get("path") == "/healthz?probe=log")
    assert access["logger"] == "uvicorn.access" and access["status"] == 200
    assert access["method"] == "GET" and "GET /healthz?probe=log" in str(access["message"])
    assert any(line["logger"] == "uvicorn.error" for line in lines())  # "Started server ..."


def test_metrics_need_a_key_when_reads_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keyed.db'}"
    upgrade(url)
    store = Store(url)
    _, key = new_key(store, "scraper")
    store.close()
    with TestClient(create_app(Settings(database_url=url, read_requires_key=True))) as client:
        assert client.get("/metrics").status_code == 401
        client.headers["Authorization"] = f"Bearer {key}"
        assert value(scrape(client), "capacity_store_up") == 1
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_a_scrape_answers_when_the_database_does_not(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-directory' / 'capacity.db'}"
    with TestClient(create_app(Settings(database_url=url))) as client:
        samples = scrape(client)
    assert value(samples, "capacity_store_up") == 0
    assert not [s for s in samples if s.name == "capacity_queue_depth"]
