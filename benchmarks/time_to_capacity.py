"""Time to capacity: what `search_capacity` reaches against wall time.

For each case (a model, its time budget and the issue's target), runs the capacity search
with that time budget (the trial budget set out of the way) once per seed and prints, per
seed, the best bits per parameter of the trials ended by each checkpoint (1, 2, 5, 10, 20
minutes, or 15/30/60 s for a one-minute budget), the final result (which also counts the
trials cut by the deadline) and its quality; then the mean and spread over the seeds
against the target.

    .venv/bin/python benchmarks/time_to_capacity.py --cases fcdnn-32x1          # 3 x 1 min
    .venv/bin/python benchmarks/time_to_capacity.py                              # ~2.2 hours
    .venv/bin/python benchmarks/time_to_capacity.py --cases lstm-32 --seeds 0 --scale 0.5
    .venv/bin/python benchmarks/time_to_capacity.py --json > now.json
    .venv/bin/python benchmarks/time_to_capacity.py --baseline before.json
    .venv/bin/python benchmarks/time_to_capacity.py --cases cnn-3x3 --trials cnn.jsonl

`--scale` multiplies every budget (a quick look; the targets hold for the full budgets).
`--trials FILE` writes every trial as it ends, one JSON object a line (case, the search's
seed, seconds since the search began, and the trial's record, its own seed as
`init_seed`): what a search spent its budget on, read trial by trial.
CNN figures are convolution bits per parameter, as the thesis reports them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from capacity_service.science.measure import conv_bits
from capacity_service.science.metrics import bits_per_parameter
from capacity_service.science.models import count_parameters
from capacity_service.science.search import search_capacity
from capacity_service.specs import CapacitySpec, TrialRecord


@dataclass(frozen=True)
class Case:
    name: str
    model: dict[str, Any]
    budget_seconds: float
    target: float  # bits per parameter (CNN: of the convolution layers)


CASES = [
    Case("fcdnn-32x1", {"kind": "fcdnn", "width": 32, "depth": 1}, 60, 2.2),
    Case("fcdnn-64x2", {"kind": "fcdnn", "width": 64, "depth": 2}, 600, 2.7),
    Case("lstm-32", {"kind": "lstm", "hidden": 32}, 1200, 3.5),
    Case("cnn-3x3", {"kind": "cnn", "kernel": 3, "channels": 4}, 900, 2.8),
]
MINUTE_MARKS = (60, 120, 300, 600, 1200)
SHORT_MARKS = (15, 30, 60)


def measure(
    case: Case, seed: int, scale: float, device: str, trials: TextIO | None = None
) -> dict[str, Any]:
    budget = case.budget_seconds * scale
    spec = CapacitySpec.model_validate({
        "model": case.model,
        "search": {"budget_seconds": budget, "budget_trials": 100_000},
        "seed": seed,
        "device": device,
    })  # fmt: skip
    counted = count_parameters(spec.model)
    ended: list[tuple[float, TrialRecord]] = []
    started = time.perf_counter()

    def on_trial(record: TrialRecord) -> None:
        seconds = time.perf_counter() - started
        ended.append((seconds, record))
        if trials is not None:
            line = {"case": case.name, "seed": seed, "seconds": round(seconds, 2)}
            # "seed" is the search's; the record's own (its initialization's) is "init_seed"
            fields = record.model_dump(mode="json") | {"init_seed": record.seed} | line
            print(json.dumps(fields), file=trials, flush=True)

    result = search_capacity(spec, on_trial=on_trial)

    def score(bits: float) -> float:  # a CNN's as the thesis reports it: conv layers only
        conv = conv_bits(spec.model, counted, bits)
        return bits_per_parameter(bits, counted.total) if conv is None else conv

    marks = [m * scale for m in (SHORT_MARKS if case.budget_seconds <= 60 else MINUTE_MARKS)]
    checkpoints = {}
    for mark in marks:
        if mark > budget:
            break
        reached = [r.mutual_information_bits for t, r in ended if t <= mark]
        checkpoints[f"{mark:g}"] = round(score(max(reached, default=0.0)), 4)
    quality = result.quality
    assert quality is not None
    return {
        "case": case.name,
        "seed": seed,
        "budget_seconds": budget,
        "checkpoints": checkpoints,
        "final": round(score(result.capacity_bits), 4),
        "best_n": result.best.n,
        "best_accuracy": result.best.accuracy,
        "best_lr": result.best.lr,
        "trials": quality.trials,
        "bracketed": quality.bracketed,
        "best_finished": quality.best_finished,
        "verdict": quality.verdict,
        "device": result.device,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help="comma-separated: " + ", ".join(c.name for c in CASES))  # fmt: skip
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (0,1,2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every budget")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--json", action="store_true", help="print the runs as JSON")
    parser.add_argument("--baseline", help="a --json output to compare the final means with")
    parser.add_argument("--trials", type=Path, help="write every trial as a JSON line here")
    args = parser.parse_args()
    by_name = {case.name: case for case in CASES}
    unknown = [n for n in args.cases.split(",") if n not in by_name]
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; use {', '.join(by_name)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    trials = args.trials.open("w") if args.trials else None
    for name in args.cases.split(","):
        for seed in seeds:
            run = measure(by_name[name], seed, args.scale, args.device, trials)
            runs.append(run)
            marks = "  ".join(f"{t}s {v:.3f}" for t, v in run["checkpoints"].items())
            print(f"{name} seed {seed}: {marks}  final {run['final']:.3f} (N {run['best_n']:,}, "
                  f"{run['trials']} trials, bracketed {run['bracketed']}, finished "
                  f"{run['best_finished']})", file=sys.stderr, flush=True)  # fmt: skip
    if trials is not None:
        trials.close()
    if args.json:
        print(json.dumps({"scale": args.scale, "runs": runs}, indent=1))
        return 0
    baseline = _means(json.loads(Path(args.baseline).read_text())["runs"]) if args.baseline else {}
    print(f"\n{'case':<12} {'budget':>7} {'mean':>6} {'spread':>13} {'target':>6}  met  before")
    for name, values in _means(runs).items():
        case = by_name[name]
        mean, low, high = values
        before = f"{baseline[name][0]:.3f}" if name in baseline else "-"
        met = "yes" if mean >= case.target else "no"
        budget = case.budget_seconds * args.scale
        print(f"{name:<12} {budget:>6.0f}s {mean:>6.3f} {low:>6.3f}-{high:<6.3f} "
              f"{case.target:>6.2f}  {met:<4} {before}")  # fmt: skip
    return 0


def _means(runs: list[dict[str, Any]]) -> dict[str, tuple[float, float, float]]:
    by_case: dict[str, list[float]] = {}
    for run in runs:
        by_case.setdefault(run["case"], []).append(run["final"])
    return {n: (statistics.fmean(v), min(v), max(v)) for n, v in by_case.items()}


if __name__ == "__main__":
    sys.exit(main())
