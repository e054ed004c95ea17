"""The thesis reproduction suite: experiments (job specs with seeds and the thesis's
reference values), a resumable runner that stores one result file per experiment and
seed, and the report that compares them with the thesis.

An experiment folder holds `*.json` experiment files and a `results/` folder that the
runner fills: `results/<name>.seed<k>.json`. A finished (experiment, seed) is never run
again. A sweep at full or half capacity names `capacity_from`, the capacity experiment
whose result (same seed) gives its capacity_n. When the suite is run again from scratch
(new code, new budgets), the earlier results move to `results-before/` by hand, and the
report shows them in a "before" column.
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
from capacity_service.specs import (
    CapacityResult,
    CapacitySpec,
    Provenance,
    SweepResult,
    SweepSpec,
)

TARGETS_FILE = "targets.json"  # beside the experiments: see capacity_service.reproduce.targets
DISCUSSION_FILE = "discussion.md"  # hand-written; the report ends with it
RESULTS_FOLDER = "results"  # the runner's results
BEFORE_FOLDER = "results-before"  # an earlier run of the suite, for the report's "before"

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


def result_path(folder: Path, name: str, seed: int, results: str = RESULTS_FOLDER) -> Path:
    return folder / results / f"{name}.seed{seed}.json"


class ResultRecord(BaseModel):
    """One result file: an (experiment, seed) run, what ran it and what it gave."""

    model_config = ConfigDict(extra="forbid")

    experiment: str
    seed: int
    kind: Literal["capacity", "quant_sweep"]
    device: str
    wall_seconds: float  # the job's own time: a job queued through the API waits first
    trials: int  # trainings: search trials, or a sweep's float and retrained networks
    code_version: str
    # where it ran (the worker's, through the API); None from an older worker
    provenance: Provenance | None = None
    finished_at: str
    # as run: with its seed, and a sweep's N and training (None in the oldest files)
    spec: CapacitySpec | SweepSpec | None = None
    result: CapacityResult | SweepResult


def load_result(
    folder: Path, name: str, seed: int, results: str = RESULTS_FOLDER
) -> ResultRecord | None:
    path = result_path(folder, name, seed, results)
    if not path.exists():
        return None
    return ResultRecord.model_validate_json(path.read_text())


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
    started: dict[int, tuple[Experiment, int, CapacitySpec | SweepSpec]] = {}

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
            if not isinstance(source.result, CapacityResult):
                raise ValueError(
                    f"{experiment.name}: capacity_from {experiment.capacity_from!r} "
                    "has no capacity result"
                )
            best = source.result.best
            spec["capacity_n"] = best.n
            # The network is trained as the capacity search trained its best trial.
            trained = {key: getattr(best, key) for key in BEST_TRAINING}
            spec["train"] = trained | spec.get("train", {})
        label = f"{experiment.name} seed {seed}"
        valid = validate_job_spec(experiment.kind, spec)
        started[batch.submit(experiment.kind, valid, label)] = (experiment, seed, valid)

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
            _write_record(folder, experiment, seed, spec, outcome.result)
            report.ran.append(label)
            for sweep in blocked.pop((experiment.name, seed), []):
                submit(sweep, seed)
    return report


def _write_record(
    folder: Path,
    experiment: Experiment,
    seed: int,
    spec: CapacitySpec | SweepSpec,
    result: BaseModel,
) -> None:
    if not isinstance(result, CapacityResult | SweepResult):
        raise TypeError(f"{experiment.name}: a {experiment.kind} job gave {type(result)}")
    record = ResultRecord(
        experiment=experiment.name,
        seed=seed,
        kind=experiment.kind,
        device=result.device,
        wall_seconds=result.wall_seconds,
        trials=_trainings(result),
        code_version=__version__,
        provenance=result.provenance,
        finished_at=datetime.now(UTC).isoformat(),
        spec=spec,
        result=result,
    )
    path = result_path(folder, experiment.name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")  # a killed run leaves no half file
    temporary.write_text(json.dumps(record.model_dump(mode="json"), indent=1) + "\n")
    temporary.replace(path)


def _trainings(result: CapacityResult | SweepResult) -> int:
    if isinstance(result, CapacityResult):
        return len(result.trials)
    return sum(1 + len(curve.points) for curve in result.curves)


def metric(experiment: Experiment, result: CapacityResult | SweepResult) -> float | None:
    """The experiment's metric in one result (None: the sweep kept no precision)."""
    name = METRIC_OF_FIGURE[experiment.figure]
    if isinstance(result, SweepResult):
        value = result.curves[0].precision_boundary if name == "precision_boundary" else None
    else:
        value = getattr(result, name, None)
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
    results: list[CapacityResult | SweepResult]  # the stored results, one per seed run

    @property
    def thesis(self) -> float | None:
        return self.experiment.thesis.get(METRIC_OF_FIGURE[self.experiment.figure])

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def spread(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def quality(self) -> str:
        """How many capacity results are tight lower bounds (maximum of I bracketed and the
        best trial finished by its own rule); "-" for sweeps and results stored before
        searches judged their quality."""
        judged = [r.quality for r in self.results if isinstance(r, CapacityResult) and r.quality]
        if not judged:
            return "-"
        tight = sum(q.bracketed and q.best_finished for q in judged)
        return f"{tight}/{len(judged)} tight"


def collect(
    folder: Path, experiments: list[Experiment], results: str = RESULTS_FOLDER
) -> list[Row]:
    """One row per experiment from the result files in `folder/<results>` (the runner's,
    or an earlier run's; an experiment with no file there has an empty row)."""
    rows = []
    for experiment in experiments:
        records = [
            r for s in experiment.seeds if (r := load_result(folder, experiment.name, s, results))
        ]
        values = [v for r in records if (v := metric(experiment, r.result)) is not None]
        rows.append(
            Row(
                experiment,
                values,
                len(records),
                ", ".join(sorted({r.device for r in records})) or "-",
                sum(r.wall_seconds for r in records),
                sum(r.trials for r in records),
                ", ".join(sorted({r.code_version for r in records})) or "-",
                [r.result for r in records],
            )
        )
    return rows
