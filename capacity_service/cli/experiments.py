"""`capacity experiments run FOLDER` (resumable: finished experiments are skipped) and
`capacity experiments report FOLDER` (docs/results.md and its figures)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from capacity_service.cli.common import describe_validation_error, fail
from capacity_service.reproduce.experiments import (
    BEFORE_FOLDER,
    DISCUSSION_FILE,
    TARGETS_FILE,
    Experiment,
    collect,
    load_experiments,
    run_experiments,
)
from capacity_service.reproduce.report import followups_markdown, report_markdown
from capacity_service.specs import CapacityResult, SweepResult


def add_parser(subparsers: Any) -> None:
    experiments = subparsers.add_parser("experiments", help="the thesis reproduction suite")
    actions = experiments.add_subparsers(
        title="experiments commands", metavar="ACTION", required=True
    )
    run = actions.add_parser("run", help="run what has no result yet (resumable)")
    run.add_argument("folder", help="e.g. experiments/thesis")
    run.add_argument(
        "--only",
        choices=("cpu", "gpu", "all"),
        default="cpu",
        help="which sizes to run (default cpu)",
    )
    run.add_argument("--name", action="append", help="run only these experiments")
    run.add_argument(
        "--seed",
        type=int,
        action="append",
        help="run only these seeds (e.g. seed 0 of everything first, the spread later)",
    )
    run.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    run.add_argument(
        "--api",
        metavar="URL",
        help="submit through the REST API at URL: every job queued at once, so N workers "
        "run them N at a time (a sweep as soon as its capacity result is in)",
    )
    run.set_defaults(handler=run_run)
    report = actions.add_parser("report", help="write the results report and its figures")
    report.add_argument("folder", help="e.g. experiments/thesis")
    report.add_argument("--out", default="docs/results.md", help="the Markdown report")
    report.set_defaults(handler=run_report)


def _experiments(folder: str) -> list[Experiment]:
    path = Path(folder)
    if not path.is_dir():
        fail(f"{folder}: no such experiment folder")
    try:
        return load_experiments(path)
    except ValidationError as error:
        fail(f"{folder}: invalid experiment:\n{describe_validation_error(error)}")
    except ValueError as error:
        fail(str(error))


def run_run(args: argparse.Namespace) -> int:
    from capacity_service.reproduce.runners import ApiRunner, LocalRunner

    chosen = [e for e in _experiments(args.folder) if args.only == "all" or e.size == args.only]
    if args.name:
        unknown = set(args.name) - {e.name for e in chosen}
        if unknown:
            fail(f"--name: no {args.only} experiment named {', '.join(sorted(unknown))}")
        chosen = [e for e in chosen if e.name in args.name]
    if args.seed:
        chosen = [
            e.model_copy(update={"seeds": [s for s in e.seeds if s in args.seed]})
            for e in chosen
            if set(e.seeds) & set(args.seed)
        ]
        if not chosen:
            fail(f"--seed: no chosen experiment has seed {', '.join(map(str, args.seed))}")
    runner = ApiRunner(args.api) if args.api else LocalRunner(args.device)
    report = run_experiments(
        Path(args.folder),
        chosen,
        runner,
        lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(
        f"ran {len(report.ran)}, skipped {len(report.skipped)} finished before"
        + (
            f", {len(report.waiting)} sweeps wait for their capacity result"
            if report.waiting
            else ""
        )
        + (f", {len(report.failed)} failed" if report.failed else "")
    )
    if report.failed:  # the others ran and kept their results; rerun to retry these
        print(f"capacity: error: failed: {'; '.join(report.failed)}", file=sys.stderr)
        return 1
    return 0


def run_report(args: argparse.Namespace) -> int:
    from capacity_service.reports import plots
    from capacity_service.reproduce.targets import load_targets, targets_markdown

    folder = Path(args.folder)
    experiments = _experiments(args.folder)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = collect(folder, experiments)  # every result file, read once
    earlier = folder / BEFORE_FOLDER
    before = collect(folder, experiments, BEFORE_FOLDER) if earlier.is_dir() else None
    figures: dict[str, str] = {}
    points = [
        plots.CapacityPoint(
            row.experiment.spec["model"]["kind"], result.params, result.capacity_bits
        )
        for row in rows
        for result in row.results
        if isinstance(result, CapacityResult)
    ]
    if points:
        name = out.with_name(f"{out.stem}-capacity.png")
        plots.save(plots.capacity_vs_params(points), name)
        figures.update(dict.fromkeys(("fcdnn", "cnn", "rnn"), name.name))
    sweeps = [  # one seed's curves per sweep: all seeds would crowd the figure
        (row.experiment.name, row.results[0])
        for row in rows
        if row.results and isinstance(row.results[0], SweepResult)
    ]
    if sweeps:
        name = out.with_name(f"{out.stem}-quantization.png")
        plots.save(plots.quantization_curves(sweeps), name)
        figures["quantization"] = name.name
    try:
        targets = load_targets(folder, {e.name for e in experiments})
        table = targets_markdown(targets, rows, before) if targets else None
    except (ValidationError, ValueError) as error:
        fail(f"{folder / TARGETS_FILE}: {error}")
    discussion = folder / DISCUSSION_FILE
    text = discussion.read_text() if discussion.exists() else ""
    out.write_text(
        report_markdown(rows, figures, table, text, followups_markdown(folder), args.folder, before)
    )
    print(f"wrote {out}" + "".join(f", {f}" for f in sorted(set(figures.values()))))
    return 0
