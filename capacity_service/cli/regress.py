"""`capacity regress SUITE.json --baseline BASELINE.json`: run a regression suite (here,
or through the API with --api: every job queued at once, N workers run N at a time) and
compare it with the baseline. Exit 0: no regression; 1: a regression (or a job that
failed: the others still finish, then the failed ones are named); 2: bad input."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from capacity_service import __version__
from capacity_service.cli.common import describe_validation_error, fail, load_json_file
from capacity_service.reproduce.regress import (
    Baseline,
    Suite,
    check_baseline,
    compare,
    junit,
    markdown,
    provenance_rows,
    run_suite,
    table_rows,
)
from capacity_service.reproduce.runners import ApiRunner, LocalRunner
from capacity_service.reproduce.runs import RunsFailed


def add_parser(subparsers: Any) -> None:
    regress = subparsers.add_parser(
        "regress",
        help="run a regression suite and compare it with a baseline",
        description=__doc__,
    )
    regress.add_argument("suite", help="suite file (JSON), e.g. regression/suite.json")
    regress.add_argument("--baseline", required=True, help="baseline file (JSON)")
    regress.add_argument(
        "--update-baseline",
        action="store_true",
        help="write the baseline from this run instead of comparing",
    )
    regress.add_argument(
        "--out-dir",
        default="regression-report",
        help="where summary.md and junit.xml go (default regression-report)",
    )
    regress.add_argument(
        "--api",
        metavar="URL",
        help="run the jobs through the REST API at URL (key from CAPACITY_API_KEY) "
        "instead of in this process: all queued at once, so N workers run them N at a time",
    )
    regress.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (local runs)")
    regress.set_defaults(handler=run_regress)


def _load(path: str, model: type[Suite] | type[Baseline], what: str) -> Any:
    document = load_json_file(path, what)
    try:
        return model.model_validate(document)
    except ValidationError as error:
        fail(f"{path}: invalid {what}:\n{describe_validation_error(error)}")


def run_regress(args: argparse.Namespace) -> int:
    suite: Suite = _load(args.suite, Suite, "suite")
    for case in suite.cases:
        if "capacity_job" in case.spec:
            fail(
                f"{args.suite}: cases.{case.name}.spec.capacity_job: a suite cannot name a "
                "job; give n, or regime with capacity_n"
            )
    baseline: Baseline | None = None
    if not args.update_baseline:
        baseline = _load(args.baseline, Baseline, "baseline")
        missing = check_baseline(suite, baseline)
        if missing:
            fail(
                f"{args.baseline}: the baseline has no {', '.join(missing)}; "
                "write one with --update-baseline"
            )
    runner = ApiRunner(args.api) if args.api else LocalRunner(args.device)
    started = time.perf_counter()
    try:
        run = run_suite(suite, runner, lambda line: print(line, file=sys.stderr, flush=True))
    except RunsFailed as error:
        print(f"capacity: error: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    measured = run.measured

    if baseline is None:
        written = Baseline(
            suite=suite.name,
            code_version=__version__,
            device=args.api or args.device,
            provenance=run.provenance,
            cases=measured,
            created_at=datetime.now(UTC).isoformat(),
        )
        Path(args.baseline).write_text(json.dumps(written.model_dump(mode="json"), indent=2) + "\n")
        for name, metrics in measured.items():
            for metric, value in metrics.items():
                print(f"{name:<28} {metric:<20} {value.value:.4g}  {value.values}")
        for field, shown in (run.provenance or {}).items():
            print(f"{field:<28} {shown}")
        print(f"wrote the baseline {args.baseline} ({seconds:.0f} s)")
        return 0

    comparisons = compare(suite, baseline, measured)
    provenance = provenance_rows(baseline, run)
    for rows in (provenance, table_rows(comparisons)):
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))
        print()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(markdown(suite, comparisons, runner.where, provenance))
    (out / "junit.xml").write_text(junit(suite, comparisons, seconds))
    failed = [c for c in comparisons if c.regressed]
    print(
        f"{len(failed)} regression(s) in {len(comparisons)} checks, {seconds:.0f} s; "
        f"summary in {out / 'summary.md'}, JUnit in {out / 'junit.xml'}"
    )
    return 1 if failed else 0
