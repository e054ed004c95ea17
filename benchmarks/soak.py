"""Soak: the queue under failure. PostgreSQL, 8 worker processes, 500 small capacity jobs,
20 SIGKILLs of workers that hold a job (each replaced by a new worker) and one PostgreSQL
restart, with the API's /metrics scraped throughout.

It reports jobs succeeded, attempts, duplicate trials (rows of one job and index: must
be 0), trials trained twice (a worker's "already stored" log line: must be 0), whether
every killed worker's job was finished by another, the wall time, and the queue depth
the scrapes saw (it must drain to zero). Exit 1 when a must is broken.

    .venv/bin/python benchmarks/soak.py                        # about 5 min on 2 cores
    .venv/bin/python benchmarks/soak.py --jobs 100 --kills 5 --workers 4
    .venv/bin/python benchmarks/soak.py --json > soak.json; ... --baseline soak.json

Kills and the restart happen at random points of progress (a kill when a random fraction
of the jobs has finished, of a random worker holding a running job), not at guessed
times, so the soak means the same on a fast machine and a slow one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from capacity_service.store.migrate import upgrade
from capacity_service.store.models import JobRow, TrialRow
from capacity_service.store.queries import Store
from capacity_service.store.vocabulary import FINISHED, JobState, StoreError

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESTART = "pg_ctlcluster --skip-systemctl-redirect {version} main restart"
TINY = {"kind": "fcdnn", "width": 6, "n_in": 10}
SEARCH = {"budget_trials": 4, "batch": 2, "epochs": 30, "batch_sizes": [8]}
TRAINED_TWICE = "was already stored"


@dataclass
class Soak:
    jobs: int
    workers: int
    kills: int
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0  # claims of all jobs together
    jobs_retried: int = 0  # jobs claimed more than once
    duplicate_trials: int = 0
    trials_trained_twice: int = 0
    trials: int = 0
    killed_jobs_finished_by_another: int = 0
    killed: list[tuple[str, int]] = field(default_factory=list)  # (worker, job it held)
    restarts: int = 0
    wall_seconds: float = 0.0
    scrapes: int = 0
    scrapes_failed: int = 0  # e.g. while PostgreSQL restarts
    queue_depth_max: float = 0.0
    queue_depth_last: float | None = None
    errors: list[str] = field(default_factory=list)

    def broken(self) -> list[str]:
        musts = [
            (self.succeeded == self.jobs, f"{self.succeeded}/{self.jobs} jobs succeeded"),
            (self.duplicate_trials == 0, f"{self.duplicate_trials} duplicate trials"),
            (self.trials_trained_twice == 0, f"{self.trials_trained_twice} trials trained twice"),
            (
                self.killed_jobs_finished_by_another == len(self.killed),
                f"{self.killed_jobs_finished_by_another}/{len(self.killed)} killed jobs "
                "finished by another worker",
            ),
            (
                self.queue_depth_last == 0,
                f"the last scrape saw queue depth {self.queue_depth_last}",
            ),
        ]
        return [why for ok, why in musts if not ok]


def fresh_postgres() -> str:
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"capacity_soak_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(ADMIN).set(database=name).render_as_string(hide_password=False)


def drop_postgres(url: str) -> None:
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def restart_command() -> str:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    return RESTART.format(version=versions[-1] if versions else "16")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Fleet:
    """The worker processes, each logging to a file of its own."""

    def __init__(self, url: str, logs: Path, lease: float) -> None:
        self.url, self.logs, self.lease = url, logs, lease
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0

    def start(self) -> str:
        worker_id = f"soak-{self.started}"
        self.started += 1
        env = os.environ | {
            "CAPACITY_DATABASE_URL": self.url,
            "CAPACITY_LEASE_SECONDS": str(self.lease),
            "CAPACITY_HEARTBEAT_SECONDS": str(self.lease / 6),
            "CAPACITY_POLL_SECONDS": "0.2",
            "CAPACITY_RETRY_BASE_SECONDS": "1",
            "OMP_NUM_THREADS": "1",
        }
        log = (self.logs / f"{worker_id}.log").open("wb")
        self.processes[worker_id] = subprocess.Popen(
            [sys.executable, "-m", "capacity_service.cli", "worker", "--device", "cpu",
             "--worker-id", worker_id],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return worker_id

    def kill(self, worker_id: str) -> None:
        process = self.processes.pop(worker_id)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def trained_twice(self) -> int:
        return sum(path.read_text(errors="replace").count(TRAINED_TWICE)
                   for path in self.logs.glob("soak-*.log"))  # fmt: skip


class Scraper(threading.Thread):
    """Reads the API's /metrics every `interval` seconds; keeps the queue depth seen."""

    def __init__(self, url: str, soak: Soak, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.url, self.soak, self.interval = url, soak, interval
        self.halt = threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.last_text = ""
        self.under_load_text = ""  # the first scrape with half the queue left

    def run(self) -> None:
        started = time.monotonic()
        with httpx.Client(timeout=10) as http:
            while not self.halt.is_set():
                self.scrape(http, time.monotonic() - started)
                self.halt.wait(self.interval)
            self.scrape(http, time.monotonic() - started)  # the last word, after the drain

    def scrape(self, http: httpx.Client, at: float) -> None:
        self.soak.scrapes += 1
        try:
            response = http.get(f"{self.url}/metrics")
            response.raise_for_status()
        except httpx.HTTPError:
            self.soak.scrapes_failed += 1
            return
        self.last_text = response.text
        depth = queue_depth(response.text)
        if depth is not None and not self.under_load_text and depth <= self.soak.jobs / 2:
            self.under_load_text = response.text
        if depth is not None:
            self.samples.append((at, depth))
            self.soak.queue_depth_max = max(self.soak.queue_depth_max, depth)
            self.soak.queue_depth_last = depth


def queue_depth(exposition: str) -> float | None:
    for family in text_string_to_metric_families(exposition):
        if family.name == "capacity_queue_depth":
            return sum(sample.value for sample in family.samples)
    return None


def start_api(url: str, logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {"CAPACITY_DATABASE_URL": url}
    process = subprocess.Popen(
        [sys.executable, "-m", "capacity_service.cli", "serve", "--port", str(port),
         "--no-migrate"],
        env=env, stdout=(logs / "api.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the API did not start; see {logs / 'api.log'}")


def count(store: Store, *states: JobState) -> int:
    with store.session(read_only=True) as session:
        return int(session.scalar(
            select(func.count()).select_from(JobRow).where(JobRow.state.in_(states))
        ) or 0)  # fmt: skip


def holders(store: Store, live: set[str]) -> dict[str, int]:
    """Live workers that hold a running job, and the job."""
    with store.session(read_only=True) as session:
        rows = session.execute(
            select(JobRow.worker_id, JobRow.id).where(JobRow.state == JobState.RUNNING.value)
        ).all()
    return {worker: job for worker, job in rows if worker in live}


def run(args: argparse.Namespace) -> Soak:
    url = args.url or fresh_postgres()
    logs = Path(tempfile.mkdtemp(prefix="soak-"))
    soak = Soak(jobs=args.jobs, workers=args.workers, kills=args.kills)
    rng = random.Random(args.seed)
    upgrade(url)
    store = Store(url)
    for i in range(args.jobs):
        store.submit("capacity", {"model": TINY, "search": SEARCH, "seed": i}, "fcdnn")
    api, base = start_api(url, logs)
    scraper = Scraper(base, soak)
    fleet = Fleet(url, logs, args.lease)
    # progress points (finished jobs) at which to kill and to restart the database
    kill_at = sorted(rng.randint(args.jobs // 20, args.jobs * 17 // 20) for _ in range(args.kills))
    restart_at = args.jobs // 2 if args.restart else None
    started = time.perf_counter()
    scraper.start()
    try:
        for _ in range(args.workers):
            fleet.start()
        deadline = time.monotonic() + args.timeout
        shown = 0
        while time.monotonic() < deadline:
            try:
                finished = count(store, *FINISHED)
            except StoreError as error:  # PostgreSQL restarting
                print(f"  (database away: {error.__class__.__name__})", file=sys.stderr)
                time.sleep(0.5)
                continue
            if finished >= args.jobs:
                break
            if kill_at and finished >= kill_at[0]:
                try:
                    held = holders(store, set(fleet.processes))
                except StoreError:
                    held = {}
                if held:
                    worker = rng.choice(sorted(held))
                    fleet.kill(worker)
                    soak.killed.append((worker, held[worker]))
                    fleet.start()
                    kill_at.pop(0)
                    print(f"  killed {worker} holding job {held[worker]} at {finished} "
                          f"finished", file=sys.stderr)  # fmt: skip
            if restart_at is not None and finished >= restart_at:
                restart_at = None
                print(f"  restarting PostgreSQL at {finished} finished", file=sys.stderr)
                subprocess.run(args.restart_command, shell=True, check=True)
                soak.restarts += 1
            if finished // 50 > shown // 50:  # a line per 50 jobs
                shown = finished
                print(f"  {finished}/{args.jobs} finished, {time.perf_counter() - started:.0f} s",
                      file=sys.stderr)  # fmt: skip
            time.sleep(0.2)
        soak.wall_seconds = time.perf_counter() - started
    finally:
        fleet.stop()
        scraper.halt.set()
        scraper.join(timeout=30)
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
    summarize(store, fleet, soak)
    (logs / "metrics-last.txt").write_text(scraper.last_text)
    (logs / "metrics-under-load.txt").write_text(scraper.under_load_text)
    drain = "\n".join(f"{at:.1f} {depth:g}" for at, depth in scraper.samples)
    (logs / "queue-depth.txt").write_text(drain + "\n")  # seconds, queued jobs
    store.close()
    if not args.url and not args.keep:
        drop_postgres(url)
    print(f"logs and the last /metrics scrape: {logs}", file=sys.stderr)
    return soak


def summarize(store: Store, fleet: Fleet, soak: Soak) -> None:
    with store.session(read_only=True) as session:
        jobs = session.execute(select(JobRow.id, JobRow.state, JobRow.attempts,
                                      JobRow.worker_id, JobRow.error)).all()  # fmt: skip
        duplicates = session.execute(
            select(TrialRow.job_id, TrialRow.index)
            .group_by(TrialRow.job_id, TrialRow.index)
            .having(func.count() > 1)
        ).all()
        soak.trials = int(session.scalar(select(func.count()).select_from(TrialRow)) or 0)
    by_id = {job.id: job for job in jobs}
    soak.succeeded = sum(job.state == JobState.SUCCEEDED for job in jobs)
    soak.failed = sum(job.state == JobState.FAILED for job in jobs)
    soak.attempts = sum(job.attempts for job in jobs)
    soak.jobs_retried = sum(job.attempts > 1 for job in jobs)
    soak.duplicate_trials = len(duplicates)
    soak.trials_trained_twice = fleet.trained_twice()
    soak.killed_jobs_finished_by_another = sum(
        by_id[job].state == JobState.SUCCEEDED and by_id[job].worker_id != worker
        for worker, job in soak.killed
    )
    soak.errors = sorted({job.error for job in jobs if job.state != JobState.SUCCEEDED
                          and job.error})[:5]  # fmt: skip


def report(soak: Soak) -> None:
    print(f"jobs succeeded             {soak.succeeded}/{soak.jobs} (failed {soak.failed})")
    print(f"attempts                   {soak.attempts} ({soak.jobs_retried} jobs claimed again)")
    print(f"trials stored              {soak.trials}")
    print(f"duplicate trials           {soak.duplicate_trials}")
    print(f"trials trained twice       {soak.trials_trained_twice}")
    print(f"killed jobs finished by another worker  "
          f"{soak.killed_jobs_finished_by_another}/{len(soak.killed)}")  # fmt: skip
    print(f"PostgreSQL restarts        {soak.restarts}")
    print(
        f"wall time                  {soak.wall_seconds:.0f} s "
        f"({soak.jobs / max(soak.wall_seconds, 1e-9):.2f} jobs/s, {soak.workers} workers)"
    )
    print(f"/metrics scrapes           {soak.scrapes} ({soak.scrapes_failed} failed); queue "
          f"depth max {soak.queue_depth_max:g}, last {soak.queue_depth_last}")  # fmt: skip
    for error in soak.errors:
        print(f"  error: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="PostgreSQL URL (default: a fresh database, dropped)")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--lease", type=float, default=3.0, help="lease seconds of the workers")
    parser.add_argument("--no-restart", dest="restart", action="store_false",
                        help="do not restart PostgreSQL")  # fmt: skip
    parser.add_argument("--restart-command", default=restart_command())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after (s)")
    parser.add_argument("--keep", action="store_true", help="keep the soak's database")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baseline", help="a --json output to compare the wall time with")
    args = parser.parse_args()
    soak = run(args)
    if args.json:
        print(json.dumps(asdict(soak)))
    else:
        report(soak)
    if args.baseline:
        before = json.loads(Path(args.baseline).read_text())
        print(f"wall time {soak.wall_seconds:.0f} s against {before['wall_seconds']:.0f} s "
              f"({soak.wall_seconds / before['wall_seconds']:.2f}x)")  # fmt: skip
    broken = soak.broken()
    for why in broken:
        print(f"BROKEN: {why}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
