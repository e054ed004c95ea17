"""What the job store holds, for monitoring (`GET /metrics`): jobs by state and kind, the
queue (claimable now, and its oldest job's age), the workers seen lately, trials stored.

Every number is read from the database at call time, so any API process reports the
same; ages are measured on the database's clock. `snapshot` reads them all in one
read-only transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from capacity_service.store.leases import claimable
from capacity_service.store.models import JobRow, TrialRow, WorkerRow
from capacity_service.store.queries import Store

# workers last seen longer ago than this are left out (every worker process has an id of
# its own, so the table only grows: this keeps the metric's label sets bounded)
WORKERS_SEEN_WITHIN_SECONDS = 3600.0
MOST_WORKERS = 1000  # and never more than this many, the most recently seen first


@dataclass(frozen=True)
class QueueStats:
    depth: int  # queued jobs claimable now (no run_after, or one that has passed)
    oldest_age_seconds: float  # since the oldest claimable job was submitted; 0 when none


@dataclass(frozen=True)
class WorkerSeen:
    id: str
    hostname: str
    device: str
    seconds_since_seen: float  # since its last claim attempt or heartbeat


@dataclass(frozen=True)
class StoreStats:
    jobs: dict[tuple[str, str], int]  # (state, kind) -> jobs; pairs with none are absent
    queue: QueueStats
    workers: list[WorkerSeen]
    trials_stored: int


def snapshot(store: Store) -> StoreStats:
    """Jobs by state and kind, the queue, the workers seen lately and the trials stored,
    read in one read-only transaction."""
    with store.session(read_only=True) as session:
        now = store.clock(session)
        return StoreStats(
            jobs=_job_counts(session),
            queue=_queue(session, now),
            workers=_workers(session, now, WORKERS_SEEN_WITHIN_SECONDS),
            trials_stored=_trials(session),
        )


def _job_counts(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(JobRow.state, JobRow.kind, func.count()).group_by(JobRow.state, JobRow.kind)
    )
    return {(str(state), str(kind)): int(count) for state, kind, count in rows}


def _queue(session: Session, now: float) -> QueueStats:
    depth, oldest = session.execute(
        select(func.count(), func.min(JobRow.created_at)).where(claimable(now))
    ).one()
    age = 0.0 if oldest is None else max(0.0, now - _epoch(oldest))
    return QueueStats(depth=int(depth), oldest_age_seconds=age)


def _workers(session: Session, now: float, within_seconds: float) -> list[WorkerSeen]:
    rows = session.scalars(
        select(WorkerRow)
        .where(WorkerRow.last_seen >= now - within_seconds)
        .order_by(WorkerRow.last_seen.desc(), WorkerRow.id)
        .limit(MOST_WORKERS)
    )
    return [
        WorkerSeen(row.id, row.hostname, row.device, max(0.0, now - row.last_seen)) for row in rows
    ]


def _trials(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(TrialRow)).scalar_one())


def _epoch(moment: Any) -> float:
    """Seconds since the epoch of a stored timestamp (SQLite gives it back without its
    zone: it was written in UTC)."""
    # a driver may return the text as stored
    when = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    assert isinstance(when, datetime)
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
