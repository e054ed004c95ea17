from __future__ import annotations

from collections.abc import Iterator

import pytest

from capacity_service.store.queries import Store


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    yield store
    store.close()
