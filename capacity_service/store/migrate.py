"""Running the Alembic migrations (the only way the schema is made or changed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from capacity_service.store.db import make_engine

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def at_head(url: str, engine: Engine | None = None) -> bool:
    """Whether the database's schema is at the newest migration (through `engine` when
    given, else a connection of its own)."""
    heads = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    own = engine is None
    engine = engine or make_engine(url)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        if own:
            engine.dispose()
    return current == heads
