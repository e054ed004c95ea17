"""Job commands: db upgrade, worker, submit, jobs, job, cancel, retry.

submit, jobs, job and cancel talk to the database directly, or to the REST API with
`--api URL` (or CAPACITY_API_URL; the key from CAPACITY_API_KEY).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from capacity_service import jobkinds
from capacity_service.cli.common import (
    describe_validation_error,
    fail,
    load_json_file,
    print_table,
)
from capacity_service.settings import Settings

if TYPE_CHECKING:
    from capacity_service.client import ApiClient
    from capacity_service.store.queries import Store
    from capacity_service.store.records import Job

FINISHED_STATES = ("succeeded", "failed", "cancelled")


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
    jobs.add_argument("--state", choices=("queued", "running", "succeeded", "failed",
                                          "cancelled"))  # fmt: skip
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


def add_source_arguments(parser: argparse.ArgumentParser, api: bool = False) -> None:
    parser.add_argument(
        "--database-url", help="SQLAlchemy URL (default CAPACITY_DATABASE_URL or SQLite)"
    )
    if api:
        parser.add_argument(
            "--api", metavar="URL",
            help="go through the REST API at URL instead of the database (default "
            "CAPACITY_API_URL; the API key comes from CAPACITY_API_KEY)",
        )  # fmt: skip


def client_from(args: argparse.Namespace) -> ApiClient | None:
    """The API client when --api (or CAPACITY_API_URL) is given, else None (database)."""
    settings = Settings()
    url = args.api or (None if args.database_url else settings.api_url)
    if url is None:
        return None
    if args.database_url:
        fail("give either --api or --database-url, not both")
    from capacity_service.client import ApiClient

    return ApiClient(url, settings.api_key)


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The environment's settings with --database-url and the given flags applied."""
    update = {"database_url": args.database_url} | overrides
    return Settings().model_copy(update={k: v for k, v in update.items() if v is not None})


def store_from(args: argparse.Namespace, migrate: bool = False) -> Store:
    from capacity_service.store.migrate import upgrade
    from capacity_service.store.queries import Store

    settings = settings_from(args)
    if migrate:
        upgrade(settings.database_url)
    return Store(settings.database_url)


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
    client = client_from(args)
    if client is not None:
        with client:
            job = client.submit(args.kind, document, priority=args.priority,
                                idempotency_key=args.idempotency_key)  # fmt: skip
        base = client.base_url
    else:
        job = _submit_to_database(args, document)
        base = None
    if args.json:
        print(json.dumps(job))
    else:
        print(f"job {job['id']} {job['state']}")
        if base is not None:
            print(f"  {base}/v1/jobs/{job['id']}")
    return 0


def _submit_to_database(args: argparse.Namespace, document: dict[str, Any]) -> dict[str, Any]:
    try:
        spec = jobkinds.validate_job_spec(args.kind, document)
    except ValidationError as error:
        fail(f"invalid {args.kind} spec ({args.spec}):\n{describe_validation_error(error)}")
    store = store_from(args, migrate=True)
    try:
        job = store.submit(
            args.kind,
            spec.model_dump(mode="json"),
            spec.model.kind,
            priority=args.priority,
            idempotency_key=args.idempotency_key,
            max_attempts=settings_from(args).max_attempts,
        )
    finally:
        store.close()
    return job.to_document()


def run_jobs(args: argparse.Namespace) -> int:
    filters = {"state": args.state, "kind": args.kind, "model_kind": args.model_kind}
    client = client_from(args)
    if client is not None:
        with client:
            found = client.jobs(**filters, cursor=args.after, limit=args.limit)["items"]
    else:
        store = store_from(args)
        try:
            jobs = store.list_jobs(**filters, after_id=args.after, limit=args.limit)
        finally:
            store.close()
        found = [job.to_document() for job in jobs]
    if args.json:
        print(json.dumps(found))
        return 0
    for job in found:
        progress = job["progress"]
        done = f"{progress.get('trials_done', '-')} trials" if progress else ""
        print(f"{job['id']:>6}  {job['kind']:<11} {job['model_kind']:<6} {job['state']:<10} {done}")
    return 0


def run_job(args: argparse.Namespace) -> int:
    client = client_from(args)

    def read() -> tuple[dict[str, Any], dict[str, Any] | None]:
        if client is not None:
            return _read_over_api(client, args.id)
        return _read_database(args)

    job, result = read()
    shown = ""
    while args.wait and job["state"] not in FINISHED_STATES:
        line = f"job {job['id']} {job['state']} {json.dumps(job['progress'])}"
        if line != shown:
            print(line, file=sys.stderr, flush=True)
            shown = line
        time.sleep(args.poll)
        job, result = read()
    if client is not None:
        client.close()
    document = job | {"result": result}
    if args.json:
        print(json.dumps(document))
        return 0
    rows = [("job", str(job["id"])), ("kind", job["kind"]), ("state", job["state"]),
            ("attempts", f"{job['attempts']}/{job['max_attempts']}"),
            ("progress", json.dumps(job["progress"]))]  # fmt: skip
    if job["error"]:
        rows.append(("error", job["error"]))
    if result is not None and "capacity_bits" in result:
        rows.append(("capacity", f"{result['capacity_bits']:,.1f} bits, "
                                 f"{result['bits_per_param']:.3f} bits/param"))  # fmt: skip
        if result.get("quality"):  # results from before it have none
            rows.append(("quality", result["quality"]["verdict"]))
    if result is not None and "curves" in result:
        boundaries = ", ".join(f"N={c['n']}: {c['precision_boundary']} bits"
                               for c in result["curves"])  # fmt: skip
        rows.append(("precision boundary", boundaries))
    print_table(rows)
    return 0 if job["state"] != "failed" or not args.wait else 1


def _read_over_api(client: ApiClient, job_id: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    job = client.job(job_id)
    return job, client.result(job_id) if job["state"] == "succeeded" else None


def _read_database(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from capacity_service.store.vocabulary import JobNotFoundError

    store = store_from(args)
    try:
        return store.get(args.id).to_document(), store.result(args.id)
    except JobNotFoundError as error:
        fail(str(error))
    finally:
        store.close()


def run_cancel(args: argparse.Namespace) -> int:
    job = _move(args, lambda client: client.cancel(args.id), lambda store: store.cancel(args.id),
                "only queued or running jobs can be cancelled")  # fmt: skip
    if args.json:
        print(json.dumps(job))
    else:
        state = "cancel requested" if job["cancel_requested"] else job["state"]
        print(f"job {job['id']} {state}")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    job = _move(args, lambda client: client.retry(args.id), lambda store: store.retry(args.id),
                "only failed or cancelled jobs can be retried")  # fmt: skip
    if args.json:
        print(json.dumps(job))
    else:
        print(f"job {job['id']} queued again; its stored trials are kept")
    return 0


def _move(
    args: argparse.Namespace,
    over_api: Callable[[ApiClient], dict[str, Any]],
    here: Callable[[Store], Job],
    allowed: str,
) -> dict[str, Any]:
    """A job moved to another state (cancel, retry) through the API or the database; a
    job that does not exist or cannot move from its state exits 2 saying so."""
    from capacity_service.store.vocabulary import JobNotFoundError, JobStateError

    client = client_from(args)
    if client is not None:
        with client:
            return over_api(client)
    store = store_from(args)
    try:
        return here(store).to_document()
    except JobNotFoundError as error:
        fail(str(error))
    except JobStateError as error:
        fail(f"{error}; {allowed}")
    finally:
        store.close()
