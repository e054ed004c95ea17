"""Where a `capacity` command finds its data: the --database-url and --api flags, the
settings they override, and the store of the commands that work on the database only
(worker, db upgrade, serve, keys). The commands that also go through the API use a
Backend (backend.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from capacity_service.settings import Settings

if TYPE_CHECKING:
    from capacity_service.store.queries import Store


def add_source_arguments(parser: argparse.ArgumentParser, api: bool = False) -> None:
    parser.add_argument(
        "--database-url", help="SQLAlchemy URL (default CAPACITY_DATABASE_URL or SQLite)"
    )
    if api:
        parser.add_argument(
            "--api", metavar="URL",
            help="go through the REST API at URL instead of the database (default "
            "CAPACITY_API_URL; the API key comes from CAPACITY_API_KEY)",
        )  # fmt: skip


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The environment's settings with --database-url and the given flags applied."""
    update = {"database_url": args.database_url} | overrides
    return Settings().model_copy(update={k: v for k, v in update.items() if v is not None})


def store_from(args: argparse.Namespace, migrate: bool = False) -> Store:
    from capacity_service.store.migrate import upgrade
    from capacity_service.store.queries import Store

    settings = settings_from(args)
    if migrate:
        upgrade(settings.database_url)
    return Store(settings.database_url)
