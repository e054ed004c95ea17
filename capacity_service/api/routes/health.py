"""/healthz (the process answers) and /readyz (the database answers, schema at head)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.engine import make_url

from capacity_service.api.deps import settings_of, store_of
from capacity_service.api.problems import UNAVAILABLE, ProblemError, documented
from capacity_service.api.schemas import Health, Readiness
from capacity_service.store.migrate import at_head

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Ready to serve: database and schema",
            responses=documented(503))  # fmt: skip
def readyz(request: Request) -> Readiness:
    url = settings_of(request).database_url
    backend = make_url(url).get_backend_name()
    store = store_of(request)
    try:
        store.ping()
        current = at_head(url, store.engine)
    except Exception as error:  # any failure to reach it means not ready
        raise ProblemError(503, "Not ready", f"the {backend} database does not answer "
                           f"({error.__class__.__name__}); check CAPACITY_DATABASE_URL",
                           type=UNAVAILABLE) from None  # fmt: skip
    if not current:
        raise ProblemError(503, "Not ready", f"the {backend} schema is not at the newest "
                           "migration; run `capacity db upgrade`", type=UNAVAILABLE)  # fmt: skip
    return Readiness(status="ready", database=backend, schema_at_head=True)
