"""`GET /metrics`: Prometheus text format.

The job store's numbers (jobs by state and kind, queue depth, the oldest queued job's age,
workers seen, trials stored) are read from the database at each scrape, so every API
process reports the same. Request counts and latencies are counted by the process that
served the requests: with `capacity serve --workers N` a scrape sees one process's share
(sum them across processes, e.g. one target per process, or read the rates as samples).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capacity_service import jobkinds
from capacity_service.api.auth import READER
from capacity_service.store.queries import Store
from capacity_service.store.stats import StoreStats, snapshot
from capacity_service.store.vocabulary import JobState, StoreError

log = logging.getLogger(__name__)

PATH = "/metrics"
UNMATCHED = "unmatched"  # the route label of a request no route matched (bounded labels)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series


class StoreCollector(Collector):
    """The job store's gauges, queried on every collect()."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to query when it is registered

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("capacity_store_up", "1 when the job store answered this scrape")
        try:
            stats = snapshot(self.store)
        except StoreError as error:  # the scrape still answers: the store is down
            log.warning("metrics: the job store did not answer: %s", error)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from store_metrics(stats)


def store_metrics(stats: StoreStats) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("capacity_jobs", "Jobs in the store by state and kind",
                             labels=["state", "kind"])  # fmt: skip
    every = {(state.value, kind) for state in JobState for kind in jobkinds.names()}
    pairs = every | set(stats.jobs)  # and any kind stored by a version that knew more
    for state, kind in sorted(pairs):
        jobs.add_metric([state, kind], float(stats.jobs.get((state, kind), 0)))
    yield jobs
    yield _gauge("capacity_queue_depth", "Queued jobs a worker can claim now (not waiting "
                 "for a retry backoff)", stats.queue.depth)  # fmt: skip
    yield _gauge("capacity_queue_oldest_age_seconds", "Seconds since the oldest claimable "
                 "queued job was submitted (database clock; 0 when none)",
                 stats.queue.oldest_age_seconds)  # fmt: skip
    seen = GaugeMetricFamily(
        "capacity_worker_last_seen_seconds",
        "Seconds since each worker last tried to claim or renewed a lease (database clock; "
        "workers seen in the last hour)",
        labels=["worker_id", "hostname", "device"],
    )
    for worker in stats.workers:
        seen.add_metric([worker.id, worker.hostname, worker.device], worker.seconds_since_seen)
    yield seen
    trials = CounterMetricFamily("capacity_trials_stored", "Trials stored, of every job and "
                                 "worker (a rate of it is the trial throughput)")  # fmt: skip
    trials.add_metric([], float(stats.trials_stored))
    yield trials


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class ApiMetrics:
    """One app's registry: its requests, the job store, this process."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "capacity_http_requests", "HTTP requests by method, route template and status",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "capacity_http_request_duration_seconds",
            "Seconds from a request's arrival to its response's end, by method and route",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(StoreCollector(store))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics and their content type: Prometheus text format 0.0.4, or
        OpenMetrics when `accept` asks for it."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class RequestMetrics:
    """ASGI middleware counting every HTTP request (but scrapes of /metrics) by its route
    template, e.g. /v1/jobs/{job_id}, never the raw path."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == PATH:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.observe(scope["method"], self._route(scope), status,
                                 time.perf_counter() - start)  # fmt: skip

    def _route(self, scope: Scope) -> str:
        """The matched route's template; "unmatched" for a path no route matches, and
        for a request refused before routing (a declared body over the size limit)."""
        path = getattr(scope.get("route"), "path", None)
        return path if isinstance(path, str) else UNMATCHED


router = APIRouter()


@router.get(PATH, include_in_schema=False, dependencies=READER)
def metrics(request: Request) -> Response:
    """Prometheus text format (documented in the README, not in the OpenAPI schema)."""
    registry: ApiMetrics = request.app.state.metrics
    body, content_type = registry.exposition(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})
