"""Alembic environment: runs migrations against the URL the caller configured."""

from __future__ import annotations

from alembic import context

from capacity_service.settings import Settings
from capacity_service.store.db import make_engine
from capacity_service.store.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings().database_url
engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copy
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
