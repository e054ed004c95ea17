"""The operator commands against a real SQLite file: submit, jobs, job, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capacity_service.cli import main

SPEC = {"model": {"kind": "fcdnn", "width": 6, "n_in": 10}, "search": {"budget_trials": 2}}


@pytest.fixture
def database(tmp_path: Path) -> list[str]:
    return ["--database-url", f"sqlite:///{tmp_path / 'jobs.db'}"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_submit_list_show_and_cancel(
    tmp_path: Path, database: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "capacity.json"
    spec.write_text(json.dumps(SPEC))
    code, out, _ = run(capsys, "submit", str(spec), "--kind", "capacity", *database, "--json",
                       "--idempotency-key", "k1")  # fmt: skip
    assert code == 0
    job = json.loads(out)
    assert job["state"] == "queued" and job["kind"] == "capacity" and job["model_kind"] == "fcdnn"
    assert {"id", "progress", "attempts", "created_at"} <= job.keys()
    _, again, _ = run(capsys, "submit", str(spec), "--kind", "capacity", *database, "--json",
                      "--idempotency-key", "k1")  # fmt: skip
    assert json.loads(again)["id"] == job["id"]
    _, listed, _ = run(capsys, "jobs", *database, "--json")
    assert [j["id"] for j in json.loads(listed)] == [job["id"]]
    _, shown, _ = run(capsys, "job", str(job["id"]), *database, "--json")
    assert json.loads(shown)["result"] is None
    _, cancelled, _ = run(capsys, "cancel", str(job["id"]), *database, "--json")
    assert json.loads(cancelled)["state"] == "cancelled"
    code, _, err = run(capsys, "cancel", str(job["id"]), *database)
    assert code == 2 and "already cancelled" in err
    code, _, err = run(capsys, "job", "999", *database)
    assert code == 2 and "no job with id 999" in err


def test_retry_queues_a_cancelled_job_and_refuses_a_queued_one(
    tmp_path: Path, database: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "capacity.json"
    spec.write_text(json.dumps(SPEC))
    _, out, _ = run(capsys, "submit", str(spec), "--kind", "capacity", *database, "--json")
    job_id = str(json.loads(out)["id"])
    code, _, err = run(capsys, "retry", job_id, *database)
    assert code == 2 and f"job {job_id} is queued" in err and "failed or cancelled" in err
    run(capsys, "cancel", job_id, *database)
    code, out, _ = run(capsys, "retry", job_id, *database, "--json")
    assert code == 0 and json.loads(out)["state"] == "queued"
    code, _, err = run(capsys, "retry", "999", *database)
    assert code == 2 and "no job with id 999" in err


def test_an_invalid_spec_is_refused_and_nothing_is_queued(
    tmp_path: Path, database: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"model": {"kind": "fcdnn", "width": 0}}))
    code, out, err = run(capsys, "submit", str(spec), "--kind", "capacity", *database)
    assert code == 2 and "model.width" in err and out == ""
    spec.write_text(json.dumps({"model": {"kind": "fcdnn"}, "n": 100, "bits": [4, 6]}))
    code, _, err = run(capsys, "submit", str(spec), "--kind", "quant_sweep", *database)
    assert code == 2 and "bits: precisions must fall strictly" in err
    assert run(capsys, "db", "upgrade", *database)[0] == 0
    _, listed, _ = run(capsys, "jobs", *database, "--json")
    assert json.loads(listed) == []


def test_a_job_of_a_kind_not_loaded_here_is_still_listed(
    tmp_path: Path, database: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from capacity_service.store.migrate import upgrade
    from capacity_service.store.queries import Store

    upgrade(database[1])
    store = Store(database[1])  # as a worker with a plugin's kind would have left it
    job, _ = store.submit("plugin_kind", {"model": {"kind": "fcdnn"}}, "fcdnn")
    store.close()
    code, listed, _ = run(capsys, "jobs", *database, "--json")
    assert code == 0 and [j["kind"] for j in json.loads(listed)] == ["plugin_kind"]
    code, shown, _ = run(capsys, "job", str(job.id), *database)
    assert code == 0 and "plugin_kind" in shown
