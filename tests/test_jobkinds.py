"""The job kinds registry: a kind registered in one module (tests/toy_kind.py) is
accepted end to end, by a real API server, a real worker and the CLI, once
CAPACITY_PLUGINS names its module; the built-in kinds come from the same registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from capacity_service import jobkinds
from capacity_service.api.auth import new_key
from capacity_service.specs import CapacitySpec, SweepSpec
from capacity_service.store.migrate import upgrade
from capacity_service.store.queries import Store
from tests.api.conftest import start_server, stop

PLUGIN = {"CAPACITY_PLUGINS": "tests.toy_kind"}
ECHO = {"model": {"kind": "fcdnn", "width": 6}, "message": "hi", "repeat": 3}


def capacity(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "capacity_service.cli", *argv]
    return subprocess.run(command, env=os.environ | env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_the_built_in_kinds_are_registered() -> None:
    assert jobkinds.names()[:2] == ("capacity", "quant_sweep")
    assert jobkinds.get("capacity").spec is CapacitySpec
    assert jobkinds.get("quant_sweep").spec is SweepSpec
    with pytest.raises(ValueError, match="unknown job kind 'mystery'; use one of capacity"):
        jobkinds.get("mystery")


def test_a_kind_registered_in_one_module_runs_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kinds.db'}"
    upgrade(url)
    store = Store(url)
    _, key = new_key(store, "kinds")
    database = {"CAPACITY_DATABASE_URL": url}
    server, base = start_server(url, tmp_path / "server.log", **PLUGIN)
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
            created = http.post("/v1/jobs", json={"kind": "echo", "spec": ECHO})
            assert created.status_code == 201, created.text
            job = created.json()
            assert job["kind"] == "echo" and job["model_kind"] == "fcdnn"
            bad = http.post("/v1/jobs", json={"kind": "echo", "spec": ECHO | {"repeat": 0}})
            assert bad.status_code == 422
            assert [e["field"] for e in bad.json()["errors"]] == ["spec.repeat"]
            listed = http.get("/v1/jobs", params={"kind": "echo"}).json()["items"]
            assert [j["id"] for j in listed] == [job["id"]]
            spec_file = tmp_path / "echo.json"
            spec_file.write_text(json.dumps(ECHO | {"message": "yo"}))
            submitted = capacity("submit", str(spec_file), "--kind", "echo", "--json",
                                 env=PLUGIN | database)  # fmt: skip
            assert submitted.returncode == 0, submitted.stderr
            second = json.loads(submitted.stdout)["id"]
            for _ in (job["id"], second):
                worker = capacity("worker", "--once", "--wait", "60", "--device", "cpu",
                                  env=PLUGIN | database)  # fmt: skip
                assert worker.returncode == 0, worker.stderr
            deadline = time.monotonic() + 60
            while http.get(f"/v1/jobs/{second}").json()["state"] != "succeeded":
                assert time.monotonic() < deadline, http.get(f"/v1/jobs/{second}").text
                time.sleep(0.1)
            result = http.get(f"/v1/jobs/{job['id']}/result").json()
            assert result["text"] == "hihihi" and result["params"] == 6
            assert result["provenance"]["package_version"]
            assert http.get(f"/v1/jobs/{second}/result").json()["text"] == "yo" * 3
    finally:
        stop(server)
        store.close()
    # without the plugin the kind is unknown: refused, naming the kinds there are
    refused = capacity("submit", str(tmp_path / "echo.json"), "--kind", "echo", env=database)
    assert refused.returncode == 2 and "invalid choice: 'echo'" in refused.stderr
    missing = capacity("jobs", env=database | {"CAPACITY_PLUGINS": "tests.no_such_module"})
    assert missing.returncode == 2
    assert "CAPACITY_PLUGINS: cannot import 'tests.no_such_module'" in missing.stderr
