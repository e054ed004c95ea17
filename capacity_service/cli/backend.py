"""One interface for the commands that read and move jobs (submit, jobs, job, cancel,
retry, plot, export): the database directly (DatabaseBackend) or the REST API with
`--api URL` or CAPACITY_API_URL (ApiBackend).

Both return the documents the API serves (`api.schemas`: JobDocument, CurveItem) and
each kind's result model; DatabaseBackend alone turns the store's records into them, so
the commands never see which side answered.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from pydantic import BaseModel

from capacity_service import jobkinds
from capacity_service.cli.common import fail
from capacity_service.cli.sources import settings_from
from capacity_service.settings import Settings
from capacity_service.store.vocabulary import (
    JobNotFoundError,
    JobStateError,
    StaleDocumentError,
)

if TYPE_CHECKING:
    from capacity_service.api.schemas import CurveItem, JobDocument
    from capacity_service.client import ApiClient
    from capacity_service.store.records import Job, StoredResult


@dataclass(frozen=True)
class JobListing:
    """Which jobs to list: the filters, and a page of `limit` after job id `after`."""

    state: str | None = None
    kind: str | None = None
    model_kind: str | None = None
    after: int | None = None
    limit: int = 50


class Backend(ABC):
    """Jobs, their results and the capacity curves, wherever they are kept. Closed on
    leaving a `with` block."""

    @abstractmethod
    def submit(
        self, kind: str, spec: dict[str, object], *, priority: int, idempotency_key: str | None
    ) -> JobDocument:
        """Queue a job; the same idempotency key returns the first job. A spec checked
        here and found invalid raises pydantic's ValidationError (the API answers 422)."""

    @abstractmethod
    def jobs(self, listing: JobListing) -> list[JobDocument]:
        """One page of jobs, newest first."""

    @abstractmethod
    def job(self, job_id: int) -> JobDocument:
        """The job; one that does not exist is refused."""

    @abstractmethod
    def result(self, job_id: int) -> BaseModel | None:
        """The job's result (its kind's result model), or None while it has none."""

    @abstractmethod
    def cancel(self, job_id: int) -> JobDocument:
        """A queued job cancelled at once, a running one asked to stop between trials; a
        finished one is refused."""

    @abstractmethod
    def retry(self, job_id: int) -> JobDocument:
        """A failed or cancelled job queued again (its stored trials are kept); a job in
        any other state is refused."""

    @abstractmethod
    def curves(
        self, *, model_kind: str | None, min_params: int | None, max_params: int | None
    ) -> list[CurveItem]:
        """Every stored capacity result matching the filters."""

    @abstractmethod
    def job_url(self, job_id: int) -> str | None:
        """Where the job can be read over HTTP (None: nowhere, the database)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class DatabaseBackend(Backend):
    """The store itself. A job that does not exist, or cannot move from its state, is a
    UsageError (exit 2), as the API's 404 and 409 are."""

    def __init__(self, settings: Settings) -> None:
        from capacity_service.store.queries import Store

        self.settings = settings
        self.store = Store(settings.database_url)  # connects on first use only

    def submit(
        self, kind: str, spec: dict[str, object], *, priority: int, idempotency_key: str | None
    ) -> JobDocument:
        from capacity_service.store.migrate import upgrade

        valid = jobkinds.validate_job_spec(kind, spec)
        # the first job may go into a database nothing has made yet (SQLite's default)
        upgrade(self.settings.database_url)
        job, _ = self.store.submit(
            kind,
            valid.model_dump(mode="json"),
            jobkinds.model_kind(valid),
            priority=priority,
            idempotency_key=idempotency_key,
            max_attempts=self.settings.max_attempts,
        )
        return _document(job)

    def jobs(self, listing: JobListing) -> list[JobDocument]:
        found = self.store.list_jobs(state=listing.state, kind=listing.kind,
                                     model_kind=listing.model_kind, after_id=listing.after,
                                     limit=listing.limit)  # fmt: skip
        return [_document(job) for job in found]

    def job(self, job_id: int) -> JobDocument:
        with _refusals():
            return _document(self.store.get(job_id))

    def result(self, job_id: int) -> BaseModel | None:
        with _refusals():
            return self.store.result(job_id)

    def cancel(self, job_id: int) -> JobDocument:
        with _refusals("only queued or running jobs can be cancelled"):
            return _document(self.store.cancel(job_id))

    def retry(self, job_id: int) -> JobDocument:
        with _refusals("only failed or cancelled jobs can be retried"):
            return _document(self.store.retry(job_id))

    def curves(
        self, *, model_kind: str | None, min_params: int | None, max_params: int | None
    ) -> list[CurveItem]:
        with _refusals():
            found = self.store.results(
                "capacity",
                model_kind=model_kind,
                min_params=min_params,
                max_params=max_params,
                limit=100_000,
            )
        return [_curve_item(stored) for stored in found]

    def job_url(self, job_id: int) -> str | None:
        return None

    def close(self) -> None:
        self.store.close()


def _document(job: Job) -> JobDocument:
    from capacity_service.api.schemas import JobDocument  # loaded when used: a quick start

    return JobDocument.of(job)


def _curve_item(stored: StoredResult) -> CurveItem:
    from capacity_service.api.schemas import CurveItem

    return CurveItem.of(stored)


@contextmanager
def _refusals(allowed: str = "") -> Iterator[None]:
    """The store's refusals as UsageErrors naming the job; `allowed` says which states
    the operation takes."""
    try:
        yield
    except (JobNotFoundError, StaleDocumentError) as error:
        fail(str(error))
    except JobStateError as error:
        fail(f"{error}; {allowed}")


class ApiBackend(Backend):
    """The REST API; its refusals are ApiErrors (4xx: exit 2, unreachable: exit 1)."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    def submit(
        self, kind: str, spec: dict[str, object], *, priority: int, idempotency_key: str | None
    ) -> JobDocument:
        return self.client.submit(kind, spec, priority=priority, idempotency_key=idempotency_key)

    def jobs(self, listing: JobListing) -> list[JobDocument]:
        page = self.client.jobs(state=listing.state, kind=listing.kind,
                                model_kind=listing.model_kind, cursor=listing.after,
                                limit=listing.limit)  # fmt: skip
        return page.items

    def job(self, job_id: int) -> JobDocument:
        return self.client.job(job_id)

    def result(self, job_id: int) -> BaseModel | None:
        return self.client.result(job_id)

    def cancel(self, job_id: int) -> JobDocument:
        return self.client.cancel(job_id)

    def retry(self, job_id: int) -> JobDocument:
        return self.client.retry(job_id)

    def curves(
        self, *, model_kind: str | None, min_params: int | None, max_params: int | None
    ) -> list[CurveItem]:
        return self.client.curves(
            model_kind=model_kind, min_params=min_params, max_params=max_params
        )

    def job_url(self, job_id: int) -> str | None:
        return f"{self.client.base_url}/v1/jobs/{job_id}"

    def close(self) -> None:
        self.client.close()


def backend_from(args: argparse.Namespace) -> Backend:
    """The API with --api (or CAPACITY_API_URL, unless --database-url is given), else the
    database."""
    settings = settings_from(args)
    url = args.api or (None if args.database_url else settings.api_url)
    if url is None:
        return DatabaseBackend(settings)
    if args.database_url:
        fail("give either --api or --database-url, not both")
    from capacity_service.client import ApiClient

    return ApiBackend(ApiClient(url, settings.api_key))
