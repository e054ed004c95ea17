"""`capacity serve` (the REST API under uvicorn) and `capacity keys` (API keys)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from sqlalchemy.engine import make_url

from capacity_service.cli.common import fail, print_table
from capacity_service.cli.sources import add_source_arguments, settings_from, store_from
from capacity_service.logs import uvicorn_log_config
from capacity_service.store.records import iso


def add_parsers(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the REST API (uvicorn)")
    serve.add_argument("--host", help="address to bind (default CAPACITY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default CAPACITY_PORT or 8000)")
    add_source_arguments(serve)
    serve.add_argument(
        "--migrate", action=argparse.BooleanOptionalAction, default=None,
        help="run the migrations first (default: on for SQLite, the embedded default; "
        "PostgreSQL deployments migrate once, e.g. the compose file's migrate service)",
    )  # fmt: skip
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes (uvicorn workers); one per core at most")  # fmt: skip
    serve.add_argument("--log-level", default="info",
                       choices=("critical", "error", "warning", "info", "debug"))  # fmt: skip
    serve.set_defaults(handler=run_serve)

    keys = subparsers.add_parser("keys", help="API keys: create, revoke, list")
    actions = keys.add_subparsers(title="keys commands", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a key; it is printed once, last line")
    create.add_argument("--name", required=True, help="who or what uses the key, e.g. ci")
    add_source_arguments(create)
    create.set_defaults(handler=run_keys_create)
    revoke = actions.add_parser("revoke", help="revoke every active key of this name")
    revoke.add_argument("name")
    add_source_arguments(revoke)
    revoke.set_defaults(handler=run_keys_revoke)
    listing = actions.add_parser("list", help="keys by name (never the keys themselves)")
    add_source_arguments(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=run_keys_list)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from capacity_service.api.app import create_app
    from capacity_service.store.migrate import upgrade

    settings = settings_from(args, host=args.host, port=args.port)
    migrate = args.migrate
    if migrate is None:
        migrate = make_url(settings.database_url).get_backend_name() == "sqlite"
    if migrate:
        upgrade(settings.database_url)
    if args.workers < 1:
        fail("--workers: give 1 or more server processes")
    # CAPACITY_LOG_FORMAT=json: uvicorn's loggers and the app's write JSON lines too
    log_config = uvicorn_log_config(settings.log_format, logging.getLogger().level)
    if log_config is None:
        log_config = LOGGING_CONFIG  # uvicorn's own text format
    if args.workers == 1:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level=args.log_level, log_config=log_config)  # fmt: skip
        return 0
    # several processes import the app themselves: hand them the settings through the
    # environment they read it from
    os.environ["CAPACITY_DATABASE_URL"] = settings.database_url
    uvicorn.run("capacity_service.api.app:create_app", factory=True, workers=args.workers,
                host=settings.host, port=settings.port, log_level=args.log_level,
                log_config=log_config)  # fmt: skip
    return 0


def run_keys_create(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name or len(name) > 200:
        fail("--name: give a name of 1 to 200 characters, e.g. --name ci")
    from capacity_service.api.auth import new_key

    store = store_from(args, migrate=True)
    try:
        key, secret = new_key(store, name)
    finally:
        store.close()
    print(f"API key {key.id} {key.name!r} created; it is shown this once, store it now:")
    print(secret)
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    store = store_from(args, migrate=True)
    try:
        revoked = store.revoke_api_keys(args.name)
    finally:
        store.close()
    if not revoked:
        fail(f"no active API key named {args.name!r}; `capacity keys list` shows them")
    print(f"revoked {len(revoked)} key(s) named {args.name!r}: "
          + ", ".join(str(key.id) for key in revoked))  # fmt: skip
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    store = store_from(args, migrate=True)
    try:
        keys = store.api_keys()
    finally:
        store.close()
    if args.json:
        print(json.dumps([{"id": key.id, "name": key.name, "created_at": iso(key.created_at),
                           "revoked_at": iso(key.revoked_at)} for key in keys]))  # fmt: skip
        return 0
    print_table([(str(k.id), f"{k.name}  created {iso(k.created_at)}"
                  + (f"  revoked {iso(k.revoked_at)}" if k.revoked_at else ""))
                 for k in keys])  # fmt: skip
    return 0
