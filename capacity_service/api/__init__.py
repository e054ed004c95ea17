"""The REST API (FastAPI). Imports neither torch nor `capacity_service.science`."""

from capacity_service.api.app import create_app

__all__ = ["create_app"]
