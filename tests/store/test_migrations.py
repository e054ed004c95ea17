"""The migrations build the schema the ORM describes, and take it down again."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from capacity_service.store.db import make_engine
from capacity_service.store.migrate import at_head, downgrade, upgrade
from capacity_service.store.models import Base


def test_upgrade_matches_the_orm_and_downgrade_empties(database_url: str) -> None:
    assert at_head(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    downgrade(database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert not at_head(database_url)
    upgrade(database_url)
    assert {"jobs", "trials", "results", "api_keys"} <= set(inspect(engine).get_table_names())
    engine.dispose()
