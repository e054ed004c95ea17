"""Job commands: db upgrade, worker, submit, jobs, job, cancel, retry.

submit, jobs, job, cancel and retry go through a Backend (backend.py): the database
directly, or the REST API with `--api URL` (or CAPACITY_API_URL; the key from
CAPACITY_API_KEY).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from capacity_service import jobkinds
from capacity_service.cli.backend import Backend, JobListing, backend_from
from capacity_service.cli.common import (
    describe_validation_error,
    fail,
    load_json_file,
    print_table,
)
from capacity_service.cli.sources import add_source_arguments, settings_from, store_from
from capacity_service.specs import CapacityResult, SweepResult
from capacity_service.store.vocabulary import JobState

if TYPE_CHECKING:
    from capacity_service.api.schemas import JobDocument


def add_parsers(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="database schema (Alembic migrations)")
    db_commands = db.add_subparsers(title="db commands", metavar="ACTION", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema to the newest version")
    add_source_arguments(upgrade)
    upgrade.set_defaults(handler=run_db_upgrade)

    worker = subparsers.add_parser("worker", help="claim and run queued jobs")
    add_source_arguments(worker)
    worker.add_argument(
        "--once", action="store_true",
        help="run at most one job, then exit (0 when nothing was claimable; see --wait)",
    )  # fmt: skip
    worker.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS",
        help="with --once: wait up to this long for a job to become claimable, e.g. one "
        "running under a lease about to expire (default 0: exit at once)",
    )  # fmt: skip
    worker.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:i")
    worker.add_argument("--worker-id", help="name in the store (default host-pid-random)")
    worker.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve its Prometheus metrics on PORT (default off)")  # fmt: skip
    worker.add_argument("--metrics-host", default="0.0.0.0",
                        help="address for --metrics-port (default 0.0.0.0: all)")  # fmt: skip
    worker.set_defaults(handler=run_worker)

    submit = subparsers.add_parser("submit", help="queue a capacity or quant_sweep job")
    add_source_arguments(submit, api=True)
    submit.add_argument("spec", help="JSON spec file ('-' for stdin)")
    submit.add_argument("--kind", required=True, choices=jobkinds.names())
    submit.add_argument("--priority", type=int, default=0, help="higher runs first")
    submit.add_argument("--idempotency-key", help="submitting the same key returns that job")
    submit.add_argument("--json", action="store_true")
    submit.set_defaults(handler=run_submit)

    jobs = subparsers.add_parser("jobs", help="list jobs, newest first")
    add_source_arguments(jobs, api=True)
    jobs.add_argument("--state", choices=[state.value for state in JobState])
    jobs.add_argument("--kind", choices=jobkinds.names())
    jobs.add_argument("--model-kind")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--after", type=int, help="continue after this job id")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(handler=run_jobs)

    job = subparsers.add_parser("job", help="one job: state, progress, result")
    add_source_arguments(job, api=True)
    job.add_argument("id", type=int)
    job.add_argument("--wait", action="store_true", help="poll until the job finishes")
    job.add_argument("--poll", type=float, default=2.0, help="seconds between polls (--wait)")
    job.add_argument("--json", action="store_true")
    job.set_defaults(handler=run_job)

    cancel = subparsers.add_parser("cancel", help="cancel a job (running: between trials)")
    add_source_arguments(cancel, api=True)
    cancel.add_argument("id", type=int)
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(handler=run_cancel)

    retry = subparsers.add_parser(
        "retry", help="queue a failed or cancelled job again (it resumes from its trials)"
    )
    add_source_arguments(retry, api=True)
    retry.add_argument("id", type=int)
    retry.add_argument("--json", action="store_true")
    retry.set_defaults(handler=run_retry)


def run_db_upgrade(args: argparse.Namespace) -> int:
    from capacity_service.store.migrate import upgrade

    upgrade(settings_from(args).database_url)
    print("schema at head")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from capacity_service.science.device import DeviceUnavailableError, resolve_device
    from workers.runtime import Worker

    if args.wait < 0:
        fail(f"--wait must be zero or more seconds, not {args.wait:g}")
    if args.wait and not args.once:
        fail("--wait applies to --once only: a worker without --once waits for jobs forever")
    try:
        device = str(resolve_device(args.device))
    except DeviceUnavailableError as error:
        fail(f"--device: {error}")
    settings = settings_from(args)
    store = store_from(args, migrate=True)
    worker = Worker(store, settings, device=device, worker_id=args.worker_id)
    if args.metrics_port is not None:
        from workers.metrics import serve

        try:
            serve(args.metrics_port, args.metrics_host, worker.worker_id, device)
        except (OSError, OverflowError) as error:
            fail(f"--metrics-port: cannot listen on {args.metrics_host}:{args.metrics_port} "
                 f"({error})")  # fmt: skip
    worker.install_signal_handlers()
    try:
        worker.run(once=args.once, wait_seconds=args.wait)
    finally:
        store.close()
    return 0


def run_submit(args: argparse.Namespace) -> int:
    document = load_json_file(args.spec)
    with backend_from(args) as backend:
        try:
            job = backend.submit(
                args.kind, document, priority=args.priority, idempotency_key=args.idempotency_key
            )
        except ValidationError as error:  # the database's check; the API answers 422
            fail(f"invalid {args.kind} spec ({args.spec}):\n{describe_validation_error(error)}")
        url = backend.job_url(job.id)
    if args.json:
        print(json.dumps(job.model_dump(mode="json")))
    else:
        print(f"job {job.id} {job.state}")
        if url is not None:
            print(f"  {url}")
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    with backend_from(args) as backend:
        listing = JobListing(args.state, args.kind, args.model_kind, args.after, args.limit)
        found = backend.jobs(listing)
    if args.json:
        print(json.dumps([job.model_dump(mode="json") for job in found]))
        return 0
    for job in found:
        progress = job.progress
        done = f"{progress.get('trials_done', '-')} trials" if progress else ""
        print(f"{job.id:>6}  {job.kind:<11} {job.model_kind:<6} {job.state:<10} {done}")
    return 0


def run_job(args: argparse.Namespace) -> int:
    with backend_from(args) as backend:
        job, result = _read(backend, args.id)
        shown = ""
        while args.wait and not job.finished:
            line = f"job {job.id} {job.state} {json.dumps(job.progress)}"
            if line != shown:
                print(line, file=sys.stderr, flush=True)
                shown = line
            time.sleep(args.poll)
            job, result = _read(backend, args.id)
    if args.json:
        shown_result = None if result is None else result.model_dump(mode="json")
        print(json.dumps(job.model_dump(mode="json") | {"result": shown_result}))
        return 0
    rows = [("job", str(job.id)), ("kind", job.kind), ("state", job.state),
            ("attempts", f"{job.attempts}/{job.max_attempts}"),
            ("progress", json.dumps(job.progress))]  # fmt: skip
    if job.error:
        rows.append(("error", job.error))
    if isinstance(result, CapacityResult):
        rows.append(("capacity", f"{result.capacity_bits:,.1f} bits, "
                                 f"{result.bits_per_param:.3f} bits/param"))  # fmt: skip
        if result.quality is not None:  # results from before it have none
            rows.append(("quality", result.quality.verdict))
    if isinstance(result, SweepResult):
        boundaries = ", ".join(f"N={c.n}: {c.precision_boundary} bits"
                               for c in result.curves)  # fmt: skip
        rows.append(("precision boundary", boundaries))
    print_table(rows)
    return 0 if job.state != JobState.FAILED or not args.wait else 1


def _read(backend: Backend, job_id: int) -> tuple[JobDocument, BaseModel | None]:
    job = backend.job(job_id)
    # only a succeeded job has a result: no request for one while --wait polls
    return job, backend.result(job_id) if job.state == JobState.SUCCEEDED else None


def run_cancel(args: argparse.Namespace) -> int:
    with backend_from(args) as backend:
        job = backend.cancel(args.id)
    if args.json:
        print(json.dumps(job.model_dump(mode="json")))
    else:
        state = "cancel requested" if job.cancel_requested else job.state
        print(f"job {job.id} {state}")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    with backend_from(args) as backend:
        job = backend.retry(args.id)
    if args.json:
        print(json.dumps(job.model_dump(mode="json")))
    else:
        print(f"job {job.id} queued again; its stored trials are kept")
    return 0
