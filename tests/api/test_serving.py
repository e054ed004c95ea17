"""How the API process is run: what it imports, its settings, its key commands, its
readiness on an unmigrated database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from capacity_service.api.auth import hash_key, new_key
from capacity_service.cli import main
from capacity_service.store.migrate import upgrade
from capacity_service.store.queries import Store
from tests.api.conftest import start_server, stop
from tests.conftest import create_postgres_database, drop_postgres_database

IMPORT_CHECK = """
import sys
from fastapi.testclient import TestClient
from capacity_service.api import create_app
from capacity_service.api.auth import new_key
from capacity_service.settings import Settings
from capacity_service.store.queries import Store

url = sys.argv[1]
_, key = new_key(Store(url), "imports")
with TestClient(create_app(Settings(database_url=url))) as client:
    auth = {"Authorization": "Bearer " + key}
    job = client.post("/v1/jobs", headers=auth, json={"kind": "capacity",
                      "spec": {"model": {"kind": "lstm"}}}).json()
    for path in ("/readyz", "/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/trials",
                 f"/v1/jobs/{job['id']}/result", "/v1/curves", "/v1/sweeps", "/openapi.json"):
        assert client.get(path).status_code < 500, path
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 200
heavy = ("torch", "skopt", "sklearn", "numpy", "capacity_service.science", "workers")
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in heavy
                      or m.startswith("capacity_service.science"))))
"""


def test_the_api_imports_neither_torch_nor_the_science(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'imports.db'}"
    upgrade(url)
    checked = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, url], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == ""


def test_reads_can_require_a_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keyed.db'}"
    upgrade(url)
    store = Store(url)
    _, key = new_key(store, "reader")
    store.close()
    process, base = start_server(url, tmp_path / "server.log", CAPACITY_READ_REQUIRES_KEY="true")
    try:
        refused = httpx.get(f"{base}/v1/jobs")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert httpx.get(f"{base}/v1/curves").status_code == 401
        keyed = httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert keyed.status_code == 200
        assert httpx.get(f"{base}/healthz").status_code == 200  # probes stay open
    finally:
        stop(process)


def test_serve_migrates_sqlite_by_default(tmp_path: Path) -> None:
    process, base = start_server(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path / "s.log")
    try:
        assert httpx.get(f"{base}/readyz").json()["schema_at_head"] is True
    finally:
        stop(process)


@pytest.mark.postgres
def test_unmigrated_postgres_is_not_ready(tmp_path: Path) -> None:
    url = create_postgres_database()
    process, base = start_server(url, tmp_path / "s.log", probe="/healthz")
    try:
        not_ready = httpx.get(f"{base}/readyz")
        assert not_ready.status_code == 503
        assert "capacity db upgrade" in not_ready.json()["detail"]
        upgrade(url)  # the compose file's one-shot migrate service does this
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        stop(process)
        drop_postgres_database(url)


def test_keys_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    assert main(["keys", "create", "--name", "ci", "--database-url", url]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("cap_") and " " not in secret
    store = Store(url)
    assert store.find_api_key(hash_key(secret)) is not None
    assert main(["keys", "list", "--database-url", url]) == 0
    listed = capsys.readouterr().out
    assert "ci" in listed and secret not in listed
    assert main(["keys", "revoke", "ci", "--database-url", url]) == 0
    found = store.find_api_key(hash_key(secret))
    assert found is not None and found.revoked
    store.close()
    assert main(["keys", "revoke", "ci", "--database-url", url]) == 2
    assert "no active API key named 'ci'" in capsys.readouterr().err
    assert main(["keys", "create", "--name", " ", "--database-url", url]) == 2
