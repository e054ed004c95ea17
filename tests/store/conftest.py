from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from capacity_service.store.migrate import downgrade, upgrade
from capacity_service.store.queries import Store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'capacity.db'}"
        upgrade(url)
        yield url
        return
    url = request.getfixturevalue("postgres_url")
    downgrade(url)
    upgrade(url)
    yield url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    yield store
    with store.engine.begin() as connection:  # leave nothing for the next test
        connection.execute(text("DELETE FROM jobs"))
    store.close()
