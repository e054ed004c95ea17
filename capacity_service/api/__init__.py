"""The REST API (FastAPI). Imports neither torch nor `capacity_service.science`.

`create_app` loads the app's modules when first asked for, so that importing the API's
documents (`api.schemas`, which the CLI and the client use) does not load the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capacity_service.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from capacity_service.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
