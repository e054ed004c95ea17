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
