"""A real worker process with `--metrics-port` and CAPACITY_LOG_FORMAT=json: it serves its
claims, trials and trial seconds over HTTP, and every line it logs is a JSON object."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from capacity_service.store.migrate import upgrade
from capacity_service.store.queries import Store
from capacity_service.store.vocabulary import JobState
from tests.api.conftest import free_port

TRIALS = 4
SPEC = {
    "model": {"kind": "fcdnn", "width": 6, "n_in": 10},
    "search": {"budget_trials": TRIALS, "batch": TRIALS, "epochs": 20, "batch_sizes": [8]},
    "seed": 1,
}


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_worker_serves_its_metrics_and_logs_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    store = Store(url)
    job, _ = store.submit("capacity", SPEC, "fcdnn")
    port = free_port()
    env = os.environ | {
        "CAPACITY_DATABASE_URL": url,
        "CAPACITY_LOG_FORMAT": "json",
        "CAPACITY_HEARTBEAT_SECONDS": "0.2",
        "CAPACITY_POLL_SECONDS": "0.1",
    }
    stderr = tmp_path / "worker.stderr"
    command = [sys.executable, "-m", "capacity_service.cli", "-v", "worker", "--device", "cpu",
               "--worker-id", "metrics-worker", "--metrics-port", str(port),
               "--metrics-host", "127.0.0.1"]  # fmt: skip
    with stderr.open("w") as errors:  # a file: a pipe could fill with debug lines and block
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            wait_for(lambda: store.get(job.id).state == JobState.SUCCEEDED, timeout=180)
            # the counters move before the job is marked succeeded, in the same process
            metrics = scrape(f"http://127.0.0.1:{port}/metrics")
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
    store.close()
    assert code == 0, stderr.read_text()

    assert metrics[("capacity_worker_claims_total", (("kind", "capacity"),))] == 1
    assert metrics[("capacity_worker_claims_total", (("kind", "quant_sweep"),))] == 0
    ended = ("capacity_worker_jobs_ended_total", (("kind", "capacity"), ("state", "succeeded")))
    assert metrics[ended] == 1
    fcdnn = (("model_kind", "fcdnn"),)
    assert metrics[("capacity_worker_trials_finished_total", fcdnn)] == TRIALS
    assert metrics[("capacity_worker_trial_seconds_count", fcdnn)] == TRIALS
    assert metrics[("capacity_worker_trial_seconds_sum", fcdnn)] > 0
    info = ("capacity_worker_info", (("device", "cpu"), ("worker_id", "metrics-worker")))
    assert metrics[info] == 1

    lines = [json.loads(line) for line in stderr.read_text().splitlines()]  # each one JSON
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    messages = {(line["logger"], line["message"]) for line in lines}
    assert ("workers.runtime", f"job {job.id} (capacity) claimed by metrics-worker") in messages
    assert any(logger == "workers.metrics" and f":{port}/metrics" in message
               for logger, message in messages)  # fmt: skip


def test_a_metrics_port_in_use_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "capacity_service.cli", "worker", "--device", "cpu",
             "--database-url", url, "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert f"--metrics-port: cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr
