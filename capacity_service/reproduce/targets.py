"""The thesis reproduction's targets: what each thesis result must come to in our
measurements, checked against the stored experiment results.

A folder's `targets.json` lists targets; each names experiments and one rule:
- `each_at_least`: every named experiment's mean over seeds is at least `value`;
- `mean_at_least`: the mean of their means is at least `value`;
- `within_of_thesis`: every mean is within `value` of the experiment's thesis value;
- `memorizes_at_bits`: every seed of the named sweeps keeps at least `accuracy` of its
  samples (all of them by default) after retraining at `value` bits.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from capacity_service.reproduce.experiments import TARGETS_FILE, Row
from capacity_service.specs import SweepResult

PARTIAL = " (not every seed has run)"


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    thesis: str = Field(description="the thesis's result, in words")
    target: str = Field(description="what reproducing it means, in words")
    experiments: list[str] = Field(min_length=1)
    rule: Literal["each_at_least", "mean_at_least", "within_of_thesis", "memorizes_at_bits"]
    value: float
    accuracy: float = Field(
        1.0, gt=0, le=1, description="memorizes_at_bits: the least accuracy that counts"
    )


def load_targets(folder: Path, known: set[str]) -> list[Target]:
    path = folder / TARGETS_FILE
    if not path.exists():
        return []
    targets = [Target.model_validate(item) for item in json.loads(path.read_text())]
    for target in targets:
        unknown = set(target.experiments) - known
        if unknown:
            # the caller names the file: saying it here would print it twice
            raise ValueError(f"no experiment named {', '.join(sorted(unknown))}")
    return targets


@dataclass(frozen=True)
class Verdict:
    ours: str  # our figures, in words
    status: str  # "met", "missed by ...", "not measured"; PARTIAL when seeds are missing


def judge(target: Target, rows: dict[str, Row]) -> Verdict:
    """The target's verdict from the experiments' rows (means over the seeds run)."""
    chosen = [rows[name] for name in target.experiments]
    partial = "" if all(r.seeds_done == len(r.experiment.seeds) for r in chosen) else PARTIAL
    if target.rule == "memorizes_at_bits":
        return _memorizes(target, chosen, partial)
    means = {r.experiment.name: r.mean for r in chosen if r.mean is not None}
    # Sweeps that ran yet kept no precision within tolerance have no boundary to average.
    kept_none = [r.experiment.name for r in chosen if r.seeds_done and r.mean is None]
    if kept_none:
        return Verdict(
            ", ".join(f"{name}: no precision kept the accuracy" for name in kept_none), "missed"
        )
    if not means:
        return Verdict("-", "not measured")
    ours = ", ".join(f"{name} {mean:.2f}" for name, mean in means.items())
    if len(means) < len(chosen):
        partial = " (not every experiment has run)"
    if target.rule == "mean_at_least":
        mean = statistics.fmean(means.values())
        return Verdict(f"mean {mean:.2f} ({ours})", _status(target.value - mean, partial))
    if target.rule == "each_at_least":
        return Verdict(ours, _status(max(target.value - m for m in means.values()), partial))
    gaps = []
    for name, mean in means.items():
        thesis = rows[name].thesis
        if thesis is None:
            raise ValueError(f"target {target.target!r}: {name} has no thesis value")
        gaps.append(abs(mean - thesis) - target.value)
    return Verdict(ours, _status(max(gaps), partial))


def targets_markdown(
    targets: list[Target], rows: list[Row], before: list[Row] | None = None
) -> list[str]:
    """The report's targets table; with `before` (an earlier run's rows), what that run
    gave beside ours."""
    by_name = {row.experiment.name: row for row in rows}
    earlier = {row.experiment.name: row for row in before or []}
    header = ["thesis result", "target", "ours", "verdict"]
    header += ["before", "verdict before"] if before else []
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for target in targets:
        verdict = judge(target, by_name)
        line = f"| {target.thesis} | {target.target} | {verdict.ours} | {verdict.status} |"
        if before:
            was = judge(target, earlier)
            line += f" {was.ours} | {was.status} |"
        lines.append(line)
    return lines


def _memorizes(target: Target, rows: list[Row], partial: str) -> Verdict:
    accuracies = []
    for row in rows:
        name = row.experiment.name
        for result in row.results:
            if not isinstance(result, SweepResult):
                raise ValueError(f"{name}: a {target.rule} target needs a sweep")
            curve = result.curves[0]
            point = next((p for p in curve.points if p.bits == target.value), None)
            if point is None:
                raise ValueError(f"{name}: the sweep has no {target.value:g}-bit point")
            accuracies.append(point.accuracy_retrained)
    if not accuracies:
        return Verdict("-", "not measured")
    worst = min(accuracies)
    runs = len(accuracies)
    ours = f"lowest {target.value:g}-bit accuracy after retraining {worst:.2%} ({runs} runs)"
    if worst >= target.accuracy:
        return Verdict(ours, "met" + partial)
    allowed = "" if target.accuracy == 1.0 else f" (at most {1 - target.accuracy:.2%} may be)"
    return Verdict(ours, f"missed: {1 - worst:.2%} of the samples are lost{allowed}" + partial)


def _status(shortfall: float, partial: str) -> str:
    # Rounded as the report shows figures, so "met" never sits beside a value that reads lower.
    shortfall = round(shortfall, 2)
    return ("met" if shortfall <= 0 else f"missed by {shortfall:.2f}") + partial
