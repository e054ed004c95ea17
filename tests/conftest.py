"""Shared fixtures: real databases (a SQLite file, a PostgreSQL database per run)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_ADMIN = os.environ.get(
    "CAPACITY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def create_postgres_database() -> str:
    """A new, empty PostgreSQL database; its URL. Drop it with drop_postgres_database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    # no pool: a connection per statement survives a server restart during the run
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"capacity_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # the server is down: say so, do not pass silently
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN} is not reachable: {error}")
    finally:
        admin.dispose()
    return make_url(POSTGRES_ADMIN).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        name = make_url(url).database
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each backend: a SQLite file, then PostgreSQL."""
    from capacity_service.store.migrate import downgrade, upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'capacity.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        downgrade(url)  # empty it: the PostgreSQL database lives for the whole run
    upgrade(url)
    return url


RESULT_MODELS = (
    {"kind": "fcdnn", "width": 6, "n_in": 10},
    {"kind": "fcdnn", "width": 10, "n_in": 12},
    {"kind": "rnn", "hidden": 4, "n_in": 4, "steps": 3},
)


@pytest.fixture(scope="session")
def results_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite database holding real results: three small capacity jobs (two FCDNNs and
    a tanh RNN) and a half-capacity sweep of the first, run by a real worker."""
    from capacity_service.jobkinds import validate_job_spec
    from capacity_service.settings import Settings
    from capacity_service.store.migrate import upgrade
    from capacity_service.store.queries import Store
    from capacity_service.store.records import Job
    from capacity_service.store.vocabulary import JobState
    from workers.runtime import Worker

    url = f"sqlite:///{tmp_path_factory.mktemp('results') / 'results.db'}"
    upgrade(url)
    store = Store(url)

    def submit(kind: str, spec: dict[str, object]) -> Job:  # stored as the API stores it
        valid = validate_job_spec(kind, spec)
        return store.submit(kind, valid.model_dump(mode="json"), valid.model.kind).job

    search = {"budget_trials": 6, "epochs": 40, "batch": 6, "batch_sizes": [8]}
    jobs = [submit("capacity", {"model": m, "search": search, "seed": 1}) for m in RESULT_MODELS]
    sweep = {"model": RESULT_MODELS[0], "regime": "half", "capacity_job": jobs[0].id,
             "bits": [8, 4, 2], "train": {"epochs": 30}, "retrain": {"epochs": 3}}  # fmt: skip
    jobs.append(submit("quant_sweep", sweep))
    settings = Settings(database_url=url, poll_seconds=0.05, heartbeat_seconds=0.5)
    worker = Worker(store, settings, device="cpu")
    while worker.run(once=True):
        pass
    for job in jobs:
        assert store.get(job.id).state == JobState.SUCCEEDED, store.get(job.id).error
    store.close()
    return url
