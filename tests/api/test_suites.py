"""`capacity regress --api` and `capacity experiments run --api` queue every job of a suite
before waiting for any (so N workers run them N at a time), print a line per finished
job, and name the failed ones after the others finish. Each test starts with no worker,
sees the jobs queued, then starts workers; it waits on states, never on a guessed time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capacity_service.store.migrate import upgrade
from tests.api.conftest import Server
from tests.reproduce.test_experiments import tiny_folder

MODEL = {"kind": "fcdnn", "width": 6, "n_in": 10}
SEARCH = {"budget_trials": 4, "epochs": 30, "batch": 4, "batch_sizes": [8]}
SUITE = {
    "name": "parallel",
    "cases": [
        {
            "name": "capacity",
            "kind": "capacity",
            "spec": {"model": MODEL, "search": SEARCH},
            "seeds": [0, 1, 2],
            "metrics": {"bits_per_param": {"abs": 0.05}},
        },
        {
            "name": "sweep",
            "kind": "quant_sweep",
            "spec": {
                "model": MODEL,
                "n": 40,
                "bits": [8, 4],
                "train": {"epochs": 20},
                "retrain": {"epochs": 2},
            },
            "metrics": {"precision_boundary": {"abs": 0}},
        },
    ],
}


@pytest.fixture(scope="module")
def backend_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SQLite only: what these tests check is the order of the client's submits and waits,
    the same on any database."""
    url = f"sqlite:///{tmp_path_factory.mktemp('suites') / 'capacity.db'}"
    upgrade(url)
    return url


class Workers:
    """Worker processes on the server's database, started when a test says so."""

    def __init__(self, server: Server, folder: Path) -> None:
        self.server, self.folder = server, folder
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int) -> None:
        env = os.environ | {
            "CAPACITY_DATABASE_URL": self.server.database_url,
            "CAPACITY_HEARTBEAT_SECONDS": "0.2",
            "CAPACITY_POLL_SECONDS": "0.1",
        }
        for _ in range(count):
            log = self.folder / f"worker{len(self.processes)}.log"
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "capacity_service.cli", "worker", "--device", "cpu"],
                env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            ))  # fmt: skip

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)


@pytest.fixture
def workers(server: Server, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(server, tmp_path)
    yield started
    started.stop()  # the next test starts with none


def cli(server: Server, *args: str) -> subprocess.Popen[str]:
    env = os.environ | {"CAPACITY_API_KEY": server.key}
    env.pop("CAPACITY_DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "capacity_service.cli", *args, "--api", server.url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def newest_id(server: Server) -> int:
    with server.client(server.key) as http:
        items = http.get("/v1/jobs", params={"limit": 1}).json()["items"]
    return int(items[0]["id"]) if items else 0


def wait_for_jobs(
    server: Server, after: int, count: int, process: subprocess.Popen[str], timeout: float = 60
) -> list[dict[str, Any]]:
    """The jobs with an id above `after`, once there are `count` of them."""
    deadline = time.monotonic() + timeout
    with server.client(server.key) as http:
        while True:
            items = http.get("/v1/jobs", params={"limit": 500}).json()["items"]
            jobs = [job for job in items if job["id"] > after]
            if len(jobs) >= count:
                return sorted(jobs, key=lambda job: job["id"])
            if process.poll() is not None:
                raise AssertionError(f"the command ended early:\n{process.communicate()}")
            assert time.monotonic() < deadline, f"{len(jobs)} of {count} jobs submitted"
            time.sleep(0.1)


def finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("finished ")]


def test_regress_queues_the_whole_suite_before_any_job_runs(
    server: Server, workers: Workers, tmp_path: Path
) -> None:
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(SUITE))
    baseline = tmp_path / "baseline.json"
    before = newest_id(server)
    process = cli(server, "regress", str(suite), "--baseline", str(baseline), "--update-baseline")
    # no worker yet: every job of the suite is queued, none waits on another
    jobs = wait_for_jobs(server, before, 4, process)
    assert [job["state"] for job in jobs] == ["queued"] * 4
    assert [job["spec"].get("seed") for job in jobs] == [0, 1, 2, 0]
    workers.start(2)
    code, out, err = finish(process)
    assert code == 0, out + err
    lines = progress_lines(err)
    assert len(lines) == 4 and lines[-1].endswith("(4 of 4)"), err
    assert all(": succeeded (" in line for line in lines), err
    assert {line.split(":")[0] for line in lines} == {
        "finished capacity seed 0", "finished capacity seed 1", "finished capacity seed 2",
        "finished sweep seed 0",
    }  # fmt: skip
    written = json.loads(baseline.read_text())
    assert len(written["cases"]["capacity"]["bits_per_param"]["values"]) == 3
    # the workers' provenance, read from the job results (not this process's)
    assert written["provenance"]["torch"] and written["provenance"]["threads"] >= 1


def test_a_failed_job_is_named_once_the_others_finish(
    server: Server, workers: Workers, tmp_path: Path
) -> None:
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(SUITE))
    baseline = tmp_path / "baseline.json"
    before = newest_id(server)
    process = cli(server, "regress", str(suite), "--baseline", str(baseline), "--update-baseline")
    jobs = wait_for_jobs(server, before, 4, process)
    with server.client(server.key) as http:  # a queued job cancelled: it ends at once
        assert http.post(f"/v1/jobs/{jobs[1]['id']}/cancel").json()["state"] == "cancelled"
    workers.start(1)
    code, out, err = finish(process)
    assert code == 1, out + err
    assert "1 of 4 runs failed: capacity seed 1 (cancelled" in err, err
    assert f"job {jobs[1]['id']}" in err
    assert len(progress_lines(err)) == 4  # the other three ran to the end
    with server.client(server.key) as http:
        states = [http.get(f"/v1/jobs/{job['id']}").json()["state"] for job in jobs]
    assert states == ["succeeded", "cancelled", "succeeded", "succeeded"]
    assert not baseline.exists()


def test_experiments_queue_capacities_at_once_and_each_sweep_when_its_capacity_is_in(
    server: Server, workers: Workers, tmp_path: Path
) -> None:
    folder = tiny_folder(tmp_path / "thesis")
    before = newest_id(server)
    process = cli(server, "experiments", "run", str(folder))
    capacities = wait_for_jobs(server, before, 3, process)
    assert [(job["kind"], job["state"]) for job in capacities] == [("capacity", "queued")] * 3
    assert newest_id(server) == capacities[-1]["id"]  # the sweep waits for its N
    workers.start(2)
    code, out, err = finish(process)
    assert code == 0, out + err
    assert "ran 4, skipped 0" in out
    lines = progress_lines(err)
    assert len(lines) == 4 and lines[-1].endswith("(4 of 4)"), err
    sweep = json.loads((folder / "results" / "tiny-half.seed0.json").read_text())
    capacity = json.loads((folder / "results" / "tiny.seed0.json").read_text())
    assert sweep["result"]["curves"][0]["n"] == capacity["result"]["best"]["n"] // 2
    assert sweep["provenance"] == sweep["result"]["provenance"] and sweep["provenance"]["torch"]
    # submitted once tiny seed 0 had finished, so after every capacity job
    with server.client(server.key) as http:
        sweep_job = wait_for_jobs(server, capacities[-1]["id"], 1, process)[0]
        source = http.get(f"/v1/jobs/{capacities[0]['id']}").json()
    assert sweep_job["kind"] == "quant_sweep" and sweep_job["created_at"] >= source["finished_at"]
