"""The thesis reproduction suite: experiments (job specs with seeds and the thesis's
reference values), a resumable runner that stores one result file per experiment and
seed, and the report that compares them with the thesis.

An experiment folder holds `*.json` experiment files and a `results/` folder that the
runner fills: `results/<name>.seed<k>.json`. A finished (experiment, seed) is never run
again. A sweep at full or half capacity names `capacity_from`, the capacity experiment
whose result (same seed) gives its capacity_n.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from capacity_service import __version__
from capacity_service.jobkinds import validate_job_spec
from capacity_service.reproduce.runs import Batch, Progress, Runner

TARGETS_FILE = "targets.json"  # beside the experiments: see capacity_service.reproduce.targets
DISCUSSION_FILE = "discussion.md"  # hand-written; the report ends with it
FOLLOWUPS_FOLDER = "followups"  # single measurements and sweeps (`--json` output)

METRIC_OF_FIGURE = {
    "fcdnn": "bits_per_param",
    "cnn": "conv_bits_per_param",
    "rnn": "bits_per_param",
    "quantization": "precision_boundary",
}


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,80}$")
    figure: Literal["fcdnn", "cnn", "rnn", "quantization"]
    kind: Literal["capacity", "quant_sweep"]
    size: Literal["cpu", "gpu"] = Field(description="gpu: runnable, too slow for a CPU")
    spec: dict[str, Any]
    seeds: list[int] = Field(min_length=1)
    capacity_from: str | None = Field(None, description="capacity experiment giving N")
    thesis: dict[str, float] = Field({}, description="the thesis's value of its metric")
    note: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if self.kind == "capacity" and len(self.seeds) < 3:
            raise ValueError("seeds: a capacity point needs at least 3 seeds (a spread)")
        if (self.kind == "quant_sweep") != (self.capacity_from is not None):
            raise ValueError(
                "capacity_from: a sweep names its capacity experiment; "
                "a capacity experiment does not"
            )
        spec = dict(self.spec)
        if self.capacity_from is not None:
            spec["capacity_n"] = 4  # stands in for the N the capacity result will give
        validate_job_spec(self.kind, spec)
        return self


def load_experiments(folder: Path) -> list[Experiment]:
    """Every experiment of `folder` (files sorted by name; a file holds one or a list)."""
    experiments: list[Experiment] = []
    for path in sorted(folder.glob("*.json")):
        if path.name == TARGETS_FILE:
            continue
        document = json.loads(path.read_text())
        for item in document if isinstance(document, list) else [document]:
            experiments.append(Experiment.model_validate(item))
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise ValueError(f"{folder}: two experiments share a name")
    known = set(names)
    for experiment in experiments:
        if experiment.capacity_from is not None and experiment.capacity_from not in known:
            raise ValueError(
                f"{experiment.name}: capacity_from {experiment.capacity_from!r} "
                "is not an experiment here"
            )
    return experiments


def result_path(folder: Path, name: str, seed: int) -> Path:
    return folder / "results" / f"{name}.seed{seed}.json"


def load_result(folder: Path, name: str, seed: int) -> dict[str, Any] | None:
    path = result_path(folder, name, seed)
    return json.loads(path.read_text()) if path.exists() else None


@dataclass
class RunReport:
    ran: list[str]
    skipped: list[str]  # finished before
    waiting: list[str]  # a sweep whose capacity result is not there (or its run failed)
    failed: list[str] = field(default_factory=list)  # "label (why)": no result file


BEST_TRAINING = ("lr", "momentum", "lr_decay", "batch_size")


def run_experiments(
    folder: Path,
    experiments: Iterable[Experiment],
    runner: Runner,
    device: str,
    progress: Progress | None = None,
) -> RunReport:
    """Run every (experiment, seed) that has no result file yet, writing each file as its
    job finishes. Every capacity experiment is submitted at once, with the sweeps whose
    capacity result (same seed) is already stored; a sweep whose capacity result is still
    to come is submitted as soon as that result's file is written. Through the API, N
    workers run them N at a time; locally, one after another, capacities first. A failed
    job writes nothing and the others still finish; `failed` names it, and its sweeps
    stay `waiting`."""
    report = RunReport([], [], [])
    todo: list[tuple[Experiment, int]] = []
    for experiment in sorted(experiments, key=lambda e: e.kind != "capacity"):
        for seed in experiment.seeds:
            if result_path(folder, experiment.name, seed).exists():
                report.skipped.append(f"{experiment.name} seed {seed}")
            else:
                todo.append((experiment, seed))
    coming = {(e.name, seed) for e, seed in todo if e.kind == "capacity"}
    blocked: dict[tuple[str, int], list[Experiment]] = {}  # capacity run -> its sweeps
    batch = Batch(runner, len(todo), progress)
    started: dict[int, tuple[Experiment, int, dict[str, Any]]] = {}

    def submit(experiment: Experiment, seed: int) -> None:
        spec = experiment.spec | {"seed": seed}
        if experiment.capacity_from is not None:
            source = load_result(folder, experiment.capacity_from, seed)
            if source is None:
                if (experiment.capacity_from, seed) in coming:
                    blocked.setdefault((experiment.capacity_from, seed), []).append(experiment)
                else:
                    report.waiting.append(f"{experiment.name} seed {seed}")
                return
            best = source["result"]["best"]
            spec["capacity_n"] = int(best["n"])
            # The network is trained as the capacity search trained its best trial.
            spec["train"] = {key: best[key] for key in BEST_TRAINING} | spec.get("train", {})
        label = f"{experiment.name} seed {seed}"
        started[batch.submit(experiment.kind, spec, label)] = (experiment, seed, spec)

    for experiment, seed in todo:
        submit(experiment, seed)
    batch.total -= len(report.waiting)  # sweeps with no capacity result to come
    if progress is not None and batch.pending:
        progress(f"submitted {len(batch.pending)} runs {runner.where}")
    while ended := batch.finished():
        for outcome in ended:
            experiment, seed, spec = started.pop(outcome.handle)
            label = f"{experiment.name} seed {seed}"
            coming.discard((experiment.name, seed))
            if outcome.result is None:
                report.failed.append(f"{label} ({outcome.describe()})")
                for sweep in blocked.pop((experiment.name, seed), []):
                    report.waiting.append(f"{sweep.name} seed {seed}")
                    batch.total -= 1
                continue
            _write_record(folder, experiment, seed, spec, outcome.result, device)
            report.ran.append(label)
            for sweep in blocked.pop((experiment.name, seed), []):
                submit(sweep, seed)
    return report


def _write_record(
    folder: Path,
    experiment: Experiment,
    seed: int,
    spec: dict[str, Any],
    result: dict[str, Any],
    device: str,
) -> None:
    record = {
        "experiment": experiment.name,
        "seed": seed,
        "kind": experiment.kind,
        "device": result.get("device", device),
        # the job's own time: a job queued through the API waits before it runs
        "wall_seconds": result["wall_seconds"],
        "trials": len(result.get("trials", [])) or _sweep_trainings(result),
        "code_version": __version__,
        # where it ran (the worker's, through the API); None from an older worker
        "provenance": result.get("provenance"),
        "finished_at": datetime.now(UTC).isoformat(),
        "spec": spec,  # as run: with the seed and, for a sweep, its N and training
        "result": result,
    }
    path = result_path(folder, experiment.name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")  # a killed run leaves no half file
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(path)


def _sweep_trainings(result: dict[str, Any]) -> int:
    return sum(1 + len(curve["points"]) for curve in result.get("curves", []))


def metric(experiment: Experiment, result: dict[str, Any]) -> float | None:
    """The experiment's metric in one result (None: the sweep kept no precision)."""
    name = METRIC_OF_FIGURE[experiment.figure]
    if name == "precision_boundary":
        value = result["curves"][0]["precision_boundary"]
        return None if value is None else float(value)
    value = result.get(name)
    return None if value is None else float(value)


@dataclass
class Row:
    experiment: Experiment
    values: list[float]
    seeds_done: int
    device: str
    wall_seconds: float
    trials: int
    code_version: str
    results: list[dict[str, Any]]  # the stored results, one per seed run

    @property
    def thesis(self) -> float | None:
        return self.experiment.thesis.get(METRIC_OF_FIGURE[self.experiment.figure])

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def spread(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def collect(folder: Path, experiments: list[Experiment]) -> list[Row]:
    rows = []
    for experiment in experiments:
        records = [r for s in experiment.seeds if (r := load_result(folder, experiment.name, s))]
        values = [v for r in records if (v := metric(experiment, r["result"])) is not None]
        rows.append(
            Row(
                experiment,
                values,
                len(records),
                ", ".join(sorted({r["device"] for r in records})) or "-",
                sum(r["wall_seconds"] for r in records),
                sum(r["trials"] for r in records),
                ", ".join(sorted({r["code_version"] for r in records})) or "-",
                [r["result"] for r in records],
            )
        )
    return rows


TITLES = {
    "fcdnn": ("FCDNN capacity (thesis Fig. 2.2b)", "bits/param"),
    "cnn": ("CNN capacity, convolution layers only", "conv bits/param"),
    "rnn": ("RNN capacity (LSTM-32: thesis 3.7 bits/param)", "bits/param"),
    "quantization": ("Precision boundary of quantized networks (thesis Fig. 2.3)", "bits"),
}


def report_markdown(
    rows: list[Row],
    figures: dict[str, str],
    targets: list[str] | None = None,
    discussion: str = "",
    followups: list[str] | None = None,
    folder_hint: str = "experiments/thesis",
) -> str:
    """docs/results.md: the targets table, a table per thesis figure, what was not run,
    the follow-up measurements, then the folder's hand-written discussion."""
    lines = [
        "# Reproducing the thesis's capacity and quantization results",
        "",
        "Generated by `capacity experiments report experiments/thesis` from the result "
        "files in `experiments/thesis/results/`. Ours is the mean over seeds, the "
        "spread their standard deviation; a measured capacity is a lower bound.",
        "",
    ]
    if targets:
        lines += ["## Targets", "", *targets, ""]
    shown: set[str] = set()  # one image may serve several tables: show it once
    for figure, (title, unit) in TITLES.items():
        own = [row for row in rows if row.experiment.figure == figure]
        if not own:
            continue
        lines += [f"## {title}", ""]
        if figure in figures and figures[figure] not in shown:
            lines += [f"![{title}]({figures[figure]})", ""]
            shown.add(figures[figure])
        lines += [
            f"| experiment | ours ({unit}) | spread | thesis | difference | seeds | "
            "device | wall time | trials | code |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in own:
            mean, thesis = row.mean, row.thesis
            difference = "-" if mean is None or thesis is None else f"{mean - thesis:+.2f}"
            lines.append(
                f"| {row.experiment.name} | {_num(mean)} | {_num(row.spread)} | {_num(thesis)} "
                f"| {difference} | {row.seeds_done}/{len(row.experiment.seeds)} | {row.device} "
                f"| {row.wall_seconds / 60:.1f} min | {row.trials} | {row.code_version} |"
            )
        lines.append("")
    missing = [row for row in rows if row.seeds_done < len(row.experiment.seeds)]
    if missing:
        lines += ["## Not run", ""]
        for row in missing:
            why = (
                "GPU-sized: runnable with `--only gpu`, too slow for this CPU"
                if row.experiment.size == "gpu"
                else "not run yet (see the discussion)"
            )
            lines.append(
                f"- {row.experiment.name}: {row.seeds_done}/"
                f"{len(row.experiment.seeds)} seeds; {why}"
            )
        lines.append("")
    if followups:
        lines += [
            "## Follow-up measurements",
            "",
            f"Single points by `{folder_hint}/followups.sh`, stored in "
            f"`{folder_hint}/{FOLLOWUPS_FOLDER}/` (seed 0, CPU).",
            "",
            *followups,
        ]
    if discussion:
        lines += [discussion.strip(), ""]
    return "\n".join(lines)


def followups_markdown(folder: Path) -> list[str]:
    """Tables of the folder's follow-up measurements (`capacity measure --json`) and
    sweeps (`capacity sweep --json`), one row per file, named by the file."""
    measures, sweeps = [], []
    for path in sorted((folder / FOLLOWUPS_FOLDER).glob("*.json")):
        result = json.loads(path.read_text())
        if "curves" in result:
            for curve in result["curves"]:
                retrained = ", ".join(
                    f"{p['bits']}: {p['accuracy_retrained']:.2%}" for p in curve["points"]
                )
                boundary = curve["precision_boundary"]
                sweeps.append(
                    f"| {path.stem} | {curve['n']} | {curve['float_accuracy']:.2%} "
                    f"| {'-' if boundary is None else boundary} | {retrained} "
                    f"| {result['wall_seconds'] / 60:.1f} min |"
                )
        else:
            train = result["train"]
            conv = result.get("conv_bits_per_param")
            measures.append(
                f"| {path.stem} | {result['n']} | {train['lr']:g} | {train['batch_size']} "
                f"| {result['epochs']}/{train['epochs']} | {result['accuracy']:.2%} "
                f"| {result['mutual_information_bits']:.0f} | {result['bits_per_param']:.2f} "
                f"| {_num(conv)} | {result['wall_seconds'] / 60:.1f} min |"
            )
    lines = []
    if measures:
        lines += [
            "| follow-up | N | lr | batch | epochs | accuracy | I (bits) | bits/param "
            "| conv bits/param | wall time |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *measures,
            "",
        ]
    if sweeps:
        lines += [
            "| follow-up sweep | N | float accuracy | boundary (bits) "
            "| accuracy after retraining, by bits | wall time |",
            "| --- | --- | --- | --- | --- | --- |",
            *sweeps,
            "",
        ]
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
