"""A worker process's own Prometheus metrics: the jobs it claimed and ended, the trials
it finished and how long each took. `capacity worker --metrics-port PORT` serves them
(`serve`); the API's `GET /metrics` reads the store-wide numbers from the database."""

from __future__ import annotations

import logging

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from capacity_service import jobkinds

log = logging.getLogger(__name__)

# a trial trains for a fraction of a second (a tiny FCDNN) up to an hour (a large search)
TRIAL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                 3600.0)  # fmt: skip

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series

CLAIMS = Counter("capacity_worker_claims", "Jobs this worker process claimed, by job kind",
                 ["kind"])  # fmt: skip
JOBS_ENDED = Counter(
    "capacity_worker_jobs_ended",
    "Jobs this worker process ended, by job kind and final state",
    ["kind", "state"],
)
TRIALS = Counter(
    "capacity_worker_trials_finished",
    "Trials this worker process finished and stored, by model kind",
    ["model_kind"],
)
TRIAL_SECONDS = Histogram(
    "capacity_worker_trial_seconds",
    "Wall seconds of each trial this worker process finished, by model kind",
    ["model_kind"],
    buckets=TRIAL_BUCKETS,
)
INFO = Gauge("capacity_worker_info", "1, labelled with this worker's id and device",
             ["worker_id", "device"])  # fmt: skip

for _kind in jobkinds.names():  # every kind's series exists from the start, at 0
    CLAIMS.labels(_kind)


def claimed(kind: str) -> None:
    CLAIMS.labels(kind).inc()


def job_ended(kind: str, state: str) -> None:
    JOBS_ENDED.labels(kind, state).inc()


def trial_finished(model_kind: str, wall_seconds: float) -> None:
    TRIALS.labels(model_kind).inc()
    TRIAL_SECONDS.labels(model_kind).observe(wall_seconds)


def serve(port: int, host: str, worker_id: str, device: str) -> int:
    """Serve this process's metrics over HTTP on host:port (port 0: a free one) from a
    thread of its own; returns the port. OSError (or OverflowError for a port outside
    0-65535) when it cannot listen there."""
    INFO.labels(worker_id, device).set(1)
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_port)
    log.info("metrics of worker %s at http://%s:%d/metrics", worker_id, host or "0.0.0.0", bound)
    return bound
