"""Claim throughput of the job queue: empty jobs per second for 1, 4 and 8 workers.

Each worker is a process with its own Store that claims a job and marks it succeeded
until the queue is empty; the figure is jobs / wall seconds of the whole drain.

    .venv/bin/python benchmarks/claims.py                       # PostgreSQL on 127.0.0.1
    .venv/bin/python benchmarks/claims.py --url sqlite:////tmp/q.db --jobs 500
    .venv/bin/python benchmarks/claims.py --json > now.json; ... --baseline now.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from capacity_service.store.migrate import downgrade, upgrade
from capacity_service.store.queries import Store
from capacity_service.store.vocabulary import JobState

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def drain(url: str, name: str) -> None:
    store = Store(url)
    while (job := store.claim(name, lease_seconds=60)) is not None:
        store.finish(job.id, name, JobState.SUCCEEDED)
    store.close()


def measure(url: str, workers: int, jobs: int) -> float:
    downgrade(url)
    upgrade(url)
    store = Store(url)
    for _ in range(jobs):
        store.submit("capacity", {}, "fcdnn")
    store.close()
    processes = [
        multiprocessing.Process(target=drain, args=(url, f"bench-{i}")) for i in range(workers)
    ]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return jobs / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a fresh PostgreSQL database)")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baseline", help="a --json output to compare with")
    args = parser.parse_args()
    url, admin, name = args.url, None, None
    if url is None:
        admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        name = f"capacity_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(ADMIN).set(database=name).render_as_string(hide_password=False)
    baseline = {}
    if args.baseline:
        with open(args.baseline) as handle:
            baseline = {row["workers"]: row["jobs_per_s"] for row in map(json.loads, handle)}
    try:
        for workers in (int(w) for w in args.workers.split(",")):
            rate = measure(url, workers, args.jobs)
            if args.json:
                print(json.dumps({"workers": workers, "jobs": args.jobs, "jobs_per_s": rate}))
                continue
            line = f"{workers:>2} workers: {rate:8.1f} jobs/s ({args.jobs} empty jobs)"
            if workers in baseline:
                line += f"  baseline {baseline[workers]:.1f} ({rate / baseline[workers] - 1:+.0%})"
            print(line)
    finally:
        if admin is not None:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
