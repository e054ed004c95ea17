"""CAPACITY_LOG_FORMAT: text (the default) or one JSON object per log line; anything else
is refused at start, naming the setting."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capacity_service.cli import main
from capacity_service.logs import JsonFormatter

KEYS = {"time", "level", "logger", "message"}


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`capacity ARGS` with `env` over this environment less any CAPACITY_LOG_FORMAT."""
    inherited = {k: v for k, v in os.environ.items() if k != "CAPACITY_LOG_FORMAT"}
    return subprocess.run(
        [sys.executable, "-m", "capacity_service.cli", *args],
        env=inherited | env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_an_unknown_log_format_exits_2_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPACITY_LOG_FORMAT", "xml")
    assert main(["jobs", "--database-url", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("capacity: error: CAPACITY_LOG_FORMAT: ")
    assert "'text'" in error and "'json'" in error and "'xml'" in error
    assert "Traceback" not in error
    assert not (tmp_path / "x.db").exists()  # refused before anything ran


def test_json_gives_one_object_per_stderr_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capacity.db'}"
    run = run_cli("-v", "db", "upgrade", "--database-url", url, CAPACITY_LOG_FORMAT="json")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "schema at head\n"  # command output stays as it was
    lines = [json.loads(line) for line in run.stderr.splitlines()]
    assert lines  # the migrations' log lines
    for line in lines:
        assert line.keys() >= KEYS, line
    assert any(line["logger"].startswith("alembic") and line["level"] == "INFO" for line in lines)


def test_text_stays_the_default(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capacity.db'}"
    run = run_cli("-v", "db", "upgrade", "--database-url", url)
    assert run.returncode == 0, run.stderr
    first = run.stderr.splitlines()[0]
    assert " INFO alembic" in first and not first.startswith("{")


def test_a_json_line_carries_extra_fields_and_the_exception() -> None:
    logger = logging.getLogger("workers.runtime")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "job %s failed", (7,), sys.exc_info(),
            extra={"job_id": 7, "worker_id": "w-1"},
        )  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line
    document = json.loads(line)
    assert document["level"] == "ERROR" and document["logger"] == "workers.runtime"
    assert document["message"] == "job 7 failed"
    assert document["job_id"] == 7 and document["worker_id"] == "w-1"
    assert "Traceback" in document["exception"] and "ValueError: boom" in document["exception"]
    assert document["time"].endswith("+00:00")
