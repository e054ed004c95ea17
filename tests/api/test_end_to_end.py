"""End to end over real HTTP: a uvicorn server process and a worker process on one
database (SQLite, then PostgreSQL). Jobs go in through the API and the CLI's --api client;
trials, results, curves and sweeps come back out; a running job is cancelled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import Server

MODEL = {"kind": "fcdnn", "width": 6, "n_in": 10}
CAPACITY = {
    "model": MODEL,
    "seed": 1,
    "search": {"budget_trials": 6, "epochs": 30, "batch": 6, "batch_sizes": [8]},
}
# long enough to be running when it is cancelled
LONG = {
    "model": {"kind": "fcdnn", "width": 24},
    "seed": 2,
    "search": {"budget_trials": 200, "budget_seconds": 600, "epochs": 3000, "batch": 4},
}


@pytest.fixture(scope="module")
def worker(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = os.environ | {
        "CAPACITY_DATABASE_URL": server.database_url,
        "CAPACITY_HEARTBEAT_SECONDS": "0.2",
        "CAPACITY_POLL_SECONDS": "0.1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "capacity_service.cli", "worker", "--device", "cpu"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    yield
    process.terminate()
    process.wait(timeout=30)


def wait_until_finished(http: httpx.Client, job_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
        time.sleep(0.2)


def capacity_cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"CAPACITY_API_KEY": server.key}
    env.pop("CAPACITY_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "capacity_service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_capacity_then_sweep_over_http(server: Server, worker: None) -> None:
    with server.client(server.key) as http:
        job = http.post("/v1/jobs", json={"kind": "capacity", "spec": CAPACITY}).json()
        sweep_spec = {
            "model": MODEL,
            "regime": "half",
            "capacity_job": job["id"],
            "bits": [8, 4],
            "train": {"epochs": 20},
            "retrain": {"epochs": 2},
        }
        sweep = http.post("/v1/jobs", json={"kind": "quant_sweep", "spec": sweep_spec}).json()

        done = wait_until_finished(http, job["id"])
        assert done["state"] == "succeeded", done
        assert done["progress"]["trials_done"] == 6 and done["attempts"] == 1

        first = http.get(f"/v1/jobs/{job['id']}/trials", params={"limit": 4}).json()
        rest = http.get(
            f"/v1/jobs/{job['id']}/trials", params={"limit": 4, "cursor": first["next_cursor"]}
        ).json()
        trials = first["items"] + rest["items"]
        assert [t["index"] for t in trials] == list(range(6)) and rest["next_cursor"] is None

        result = http.get(f"/v1/jobs/{job['id']}/result").json()
        assert result["params"] == 6 * 10 + 6 + 6 * 2 + 2
        best = max(trials, key=lambda t: t["mutual_information_bits"])
        assert result["capacity_bits"] == best["mutual_information_bits"]
        assert result["bits_per_param"] == pytest.approx(result["capacity_bits"] / 80)
        assert result["best"]["index"] == best["index"] and result["curve"]

        csv_text = http.get(f"/v1/jobs/{job['id']}/result", params={"format": "csv"})
        assert csv_text.headers["content-type"].startswith("text/csv")
        lines = csv_text.text.splitlines()
        assert lines[0] == "n,accuracy,mutual_information_bits,best"
        assert [int(line.split(",")[0]) for line in lines[1:]] == [p["n"] for p in result["curve"]]

        curves = http.get("/v1/curves", params={"model_kind": "fcdnn", "max_params": 80})
        assert job["id"] in [item["job_id"] for item in curves.json()["items"]]

        swept = wait_until_finished(http, sweep["id"])
        assert swept["state"] == "succeeded", swept
        sweep_result = http.get(f"/v1/jobs/{sweep['id']}/result").json()
        assert sweep_result["curves"][0]["n"] == result["best"]["n"] // 2
        assert [p["bits"] for p in sweep_result["curves"][0]["points"]] == [8, 4]
        listed = http.get("/v1/sweeps").json()["items"]
        assert sweep["id"] in [item["job_id"] for item in listed]


def test_cancel_a_running_job_over_http(server: Server, worker: None) -> None:
    with server.client(server.key) as http:
        job = http.post("/v1/jobs", json={"kind": "capacity", "spec": LONG}).json()
        deadline = time.monotonic() + 60
        while http.get(f"/v1/jobs/{job['id']}").json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        asked = http.post(f"/v1/jobs/{job['id']}/cancel").json()
        assert asked["cancel_requested"] is True
        done = wait_until_finished(http, job["id"], timeout=60)
        assert done["state"] == "cancelled"


def test_cli_through_the_api(server: Server, worker: None, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(CAPACITY | {"seed": 5}))
    submitted = capacity_cli(
        server, "submit", str(spec_file), "--kind", "capacity", "--api", server.url, "--json"
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    waited = capacity_cli(
        server, "job", str(job_id), "--wait", "--poll", "0.2", "--api", server.url, "--json"
    )
    assert waited.returncode == 0, waited.stderr
    document = json.loads(waited.stdout)
    assert document["state"] == "succeeded" and document["result"]["capacity_bits"] >= 0

    listed = capacity_cli(server, "jobs", "--api", server.url, "--state", "succeeded", "--json")
    assert job_id in [job["id"] for job in json.loads(listed.stdout)]

    refused = capacity_cli(server, "cancel", str(job_id), "--api", server.url)
    assert refused.returncode == 2 and "409" in refused.stderr and "already" in refused.stderr

    spec_file.write_text(json.dumps({"model": {"kind": "fcdnn", "width": -1}}))
    bad = capacity_cli(server, "submit", str(spec_file), "--kind", "capacity", "--api", server.url)
    assert bad.returncode == 2 and "spec.model.width" in bad.stderr

    down = capacity_cli(server, "jobs", "--api", "http://127.0.0.1:9")
    assert down.returncode == 1 and "cannot reach the API" in down.stderr


def test_regress_through_the_api(server: Server, worker: None, tmp_path: Path) -> None:
    case = {
        "name": "tiny",
        "kind": "capacity",
        "spec": CAPACITY,
        "metrics": {"bits_per_param": {"abs": 0.05}},
    }
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"name": "api", "cases": [case]}))
    baseline = tmp_path / "baseline.json"
    made = capacity_cli(
        server,
        "regress",
        str(suite),
        "--baseline",
        str(baseline),
        "--update-baseline",
        "--api",
        server.url,
    )
    assert made.returncode == 0, made.stderr
    checked = capacity_cli(
        server,
        "regress",
        str(suite),
        "--baseline",
        str(baseline),
        "--api",
        server.url,
        "--out-dir",
        str(tmp_path / "report"),
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 regression(s) in 1 checks" in checked.stdout
