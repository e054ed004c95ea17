"""Regression sweeps: a fixed suite of small capacity and sweep jobs whose metrics are
compared with a stored baseline within the tolerances the suite states.

A case runs once per seed; its metric is the mean over the seeds. Bits per parameter
and capacity regress when they fall by more than the tolerance; the precision boundary
regresses when it rises by more (a sweep with no boundary counts as one bit above its
highest precision). The allowed change is max(abs, rel * |baseline|).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Literal
from xml.etree import ElementTree

from pydantic import BaseModel, ConfigDict, Field, model_validator

from capacity_service.jobkinds import validate_job_spec
from capacity_service.provenance import ProvenanceFields, merged
from capacity_service.provenance import table as provenance_table
from capacity_service.reproduce.runs import Batch, Progress, Runner, RunsFailed
from capacity_service.specs import CapacityResult, Provenance, SweepResult

# metric -> (job kind it belongs to, +1 if higher is better, -1 if lower is better)
METRICS: dict[str, tuple[str, int]] = {
    "bits_per_param": ("capacity", +1),
    "capacity_bits": ("capacity", +1),
    "precision_boundary": ("quant_sweep", -1),
    # the fraction of a case's seeds whose search quality says so (1.0: every seed):
    # a case that lists them requires its capacities to stay bracketed / finished
    "bracketed": ("capacity", +1),
    "best_finished": ("capacity", +1),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Tolerance(_Strict):
    abs: float = Field(0.0, ge=0, description="allowed change in the metric's unit")
    rel: float = Field(0.0, ge=0, description="allowed change as a fraction of the baseline")


class Case(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,80}$")
    kind: Literal["capacity", "quant_sweep"]
    spec: dict[str, Any]
    seeds: list[int] = Field([0], min_length=1, description="runs; the metric is their mean")
    metrics: dict[str, Tolerance] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_metrics_and_valid_spec(self) -> Case:
        for metric in self.metrics:
            if metric not in METRICS:
                raise ValueError(f"metrics: unknown metric {metric!r}; use {', '.join(METRICS)}")
            if METRICS[metric][0] != self.kind:
                raise ValueError(f"metrics: {metric} belongs to {METRICS[metric][0]} cases")
        validate_job_spec(self.kind, self.spec)  # a bad spec fails here, before any run
        return self


class Suite(_Strict):
    name: str
    cases: list[Case] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Suite:
        names = [case.name for case in self.cases]
        if len(set(names)) != len(names):
            raise ValueError("cases: every case needs its own name")
        return self


class Measured(_Strict):
    value: float
    values: list[float]


class Baseline(_Strict):
    suite: str
    code_version: str
    device: str
    created_at: str | None = None
    # where it was measured (capacity_service.provenance; None in older baselines)
    provenance: ProvenanceFields | None = None
    cases: dict[str, dict[str, Measured]]


@dataclass(frozen=True)
class Comparison:
    case: str
    metric: str
    baseline: float
    now: float
    allowed: float
    values: list[float]

    @property
    def change(self) -> float:
        """Positive = better, in the metric's unit."""
        return (self.now - self.baseline) * METRICS[self.metric][1]

    @property
    def regressed(self) -> bool:
        return self.change < -self.allowed - 1e-12

    @property
    def status(self) -> str:
        if self.regressed:
            return "REGRESSION"
        return "improved" if self.change > self.allowed else "ok"


def check_baseline(suite: Suite, baseline: Baseline) -> list[str]:
    """What the baseline lacks for this suite (each a 'case.metric' path)."""
    missing = []
    for case in suite.cases:
        for metric in case.metrics:
            if metric not in baseline.cases.get(case.name, {}):
                missing.append(f"cases.{case.name}.{metric}")
    return missing


def metric_values(case: Case, result: BaseModel) -> dict[str, float]:
    """The metrics of one run of `case` from its result."""
    values: dict[str, float] = {}
    for metric in case.metrics:
        if isinstance(result, SweepResult):  # precision_boundary, the one sweep metric
            curve = result.curves[0]
            highest = max(point.bits for point in curve.points)
            boundary = curve.precision_boundary
            values[metric] = float(highest + 1 if boundary is None else boundary)
        elif not isinstance(result, CapacityResult):
            raise TypeError(f"{case.name}: a {case.kind} case gave {type(result).__name__}")
        elif metric in ("bracketed", "best_finished"):
            quality = result.quality  # results from before it: not known
            values[metric] = float(quality is not None and getattr(quality, metric))
        else:
            values[metric] = float(getattr(result, metric))
    return values


@dataclass(frozen=True)
class SuiteRun:
    measured: dict[str, dict[str, Measured]]  # case -> metric -> mean over the seeds
    provenance: ProvenanceFields | None  # where the results were computed (the workers)


def run_suite(suite: Suite, runner: Runner, progress: Progress | None = None) -> SuiteRun:
    """Every case at every seed through `runner`: all submitted first, then collected as
    they finish (through the API, N workers run N at a time), then the mean of each
    metric per case. RunsFailed names the runs that failed once all the others ended."""
    runs = [(case, seed) for case in suite.cases for seed in case.seeds]
    batch = Batch(runner, len(runs), progress)
    handles = [
        batch.submit(
            case.kind,
            validate_job_spec(case.kind, case.spec | {"seed": seed}),
            f"{case.name} seed {seed}",
        )
        for case, seed in runs
    ]
    if progress is not None:
        progress(f"submitted {len(runs)} runs {runner.where}")
    results: dict[int, BaseModel] = {}
    failed: list[str] = []
    while ended := batch.finished():
        for outcome in ended:
            if outcome.result is None:
                failed.append(f"{batch.labels[outcome.handle]} ({outcome.describe()})")
            else:
                results[outcome.handle] = outcome.result
    if failed:
        raise RunsFailed(failed, len(runs))
    measured: dict[str, dict[str, Measured]] = {}
    for case in suite.cases:
        values: dict[str, list[float]] = {metric: [] for metric in case.metrics}
        for handle, (of, _seed) in zip(handles, runs, strict=True):
            if of is case:
                for metric, value in metric_values(case, results[handle]).items():
                    values[metric].append(value)
        measured[case.name] = {
            metric: Measured(value=statistics.fmean(seen), values=seen)
            for metric, seen in values.items()
        }
    found = [getattr(results[handle], "provenance", None) for handle in handles]
    return SuiteRun(measured, merged([p if isinstance(p, Provenance) else None for p in found]))


def compare(
    suite: Suite, baseline: Baseline, measured: dict[str, dict[str, Measured]]
) -> list[Comparison]:
    comparisons = []
    for case in suite.cases:
        for metric, tolerance in case.metrics.items():
            before = baseline.cases[case.name][metric].value
            now = measured[case.name][metric]
            allowed = max(tolerance.abs, tolerance.rel * abs(before))
            comparisons.append(
                Comparison(case.name, metric, before, now.value, allowed, now.values)
            )
    return comparisons


def table_rows(comparisons: list[Comparison]) -> list[list[str]]:
    rows = [["case", "metric", "baseline", "now", "change", "allowed", "status"]]
    for c in comparisons:
        rows.append(
            [
                c.case,
                c.metric,
                f"{c.baseline:.4g}",
                f"{c.now:.4g}",
                f"{c.now - c.baseline:+.4g}",
                f"{c.allowed:.3g}",
                c.status,
            ]
        )
    return rows


def provenance_rows(baseline: Baseline, run: SuiteRun) -> list[list[str]]:
    """field | baseline | now: where the baseline and this run were computed, so that a
    change after a torch upgrade or on another machine shows as such."""
    return provenance_table(baseline.provenance, run.provenance)


def markdown(
    suite: Suite,
    comparisons: list[Comparison],
    where: str,
    provenance: list[list[str]] | None = None,
) -> str:
    failed = [c for c in comparisons if c.regressed]
    verdict = (
        (f"**{len(failed)} regression(s)**: " + ", ".join(f"{c.case} {c.metric}" for c in failed))
        if failed
        else "**no regression**"
    )
    lines = [f"# Regression sweep `{suite.name}`", "", f"{verdict} ({where}).", ""]
    for rows in ([provenance] if provenance else []) + [table_rows(comparisons)]:
        lines.append("| " + " | ".join(rows[0]) + " |")
        lines.append("|" + " --- |" * len(rows[0]))
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        lines.append("")
    return "\n".join(lines)


def junit(suite: Suite, comparisons: list[Comparison], seconds: float) -> str:
    failures = sum(c.regressed for c in comparisons)
    root = ElementTree.Element(
        "testsuite",
        name=f"regression.{suite.name}",
        tests=str(len(comparisons)),
        failures=str(failures),
        errors="0",
        time=f"{seconds:.1f}",
    )
    for c in comparisons:
        case = ElementTree.SubElement(
            root, "testcase", classname=f"regression.{c.case}", name=c.metric
        )
        if c.regressed:
            failure = ElementTree.SubElement(
                case,
                "failure",
                message=f"{c.metric} {c.now:.4g} vs baseline {c.baseline:.4g} "
                f"(allowed change {c.allowed:.3g})",
            )
            failure.text = f"runs: {c.values}"
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
