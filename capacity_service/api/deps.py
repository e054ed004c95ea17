"""The app's shared objects, reached from a request (set up by `create_app`)."""

from __future__ import annotations

from fastapi import Request

from capacity_service.settings import Settings
from capacity_service.store.queries import Store


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
