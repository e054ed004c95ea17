"""Seconds per sweep of the code search (`science/code_search.py`), at the suite's and the
thesis's half-capacity FCDNN sizes, on a CPU or a GPU.

A sweep scores every unit of the last hidden layer CHANGES_PER_UNIT times, each time
every one-step change of its fan-in codes on all N samples, so it costs about
units x 4 x 2 x N x fan-in element operations whatever the weights are. Each case builds
the FCDNN at its initial weights, quantizes it (every weight fixed, as after retraining;
an untrained network misses half its samples, so no sweep stops early) and times
`--sweeps` sweeps, best of R. A precision's search runs up to MAX_SWEEPS sweeps, and
with its `retrain.search_rounds` rounds up to (1 + rounds) searches; the last column
is that bound.

    .venv/bin/python benchmarks/code_search.py                  # the table
    .venv/bin/python benchmarks/code_search.py --device cuda
    .venv/bin/python benchmarks/code_search.py --json > before
    .venv/bin/python benchmarks/code_search.py --baseline before  # compare seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from capacity_service.science.code_search import CHANGES_PER_UNIT, MAX_SWEEPS, search_codes
from capacity_service.science.data import make_dataset
from capacity_service.science.device import DeviceUnavailableError, resolve_device
from capacity_service.science.fixed_point import apply_precision
from capacity_service.science.models import FCDNN, build_model
from capacity_service.specs import FCDNNSpec, RetrainSpec

SEARCH_ROUNDS = RetrainSpec().search_rounds  # the default


@dataclass(frozen=True)
class Case:
    name: str
    width: int
    depth: int
    n: int
    bits: int = 4

    @property
    def spec(self) -> FCDNNSpec:
        return FCDNNSpec(width=self.width, depth=self.depth)

    def candidate_samples(self) -> int:
        """Candidate-sample scores a sweep computes: units x visits x 2 directions x
        fan-in x N (the last hidden layer's fan-in: the width below it, or the input)."""
        fan_in = self.width if self.depth > 1 else self.spec.input_bits
        return self.width * CHANGES_PER_UNIT * 2 * fan_in * self.n


CASES: tuple[Case, ...] = (
    # the suite's fcdnn-64x2-half, seed 2 (N = 14,291)
    Case("fcdnn-64x2-n14291", 64, 2, 14_291),
    # the thesis's half-capacity network (fcdnn-128x3 at N = 2^16)
    Case("fcdnn-128x3-n65536", 128, 3, 65_536),
)


def time_sweeps(case: Case, sweeps: int, device: torch.device) -> float:
    """Seconds per sweep of `sweeps` sweeps on a fresh quantized network."""
    spec = case.spec
    model = build_model(spec, 0, device)
    assert isinstance(model, FCDNN)
    data = make_dataset(spec, case.n, 1, device)
    apply_precision(model, case.bits)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    outcome = search_codes(model, data, max_sweeps=sweeps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    if outcome.sweeps != sweeps:
        raise RuntimeError(f"{case.name}: the search stopped after {outcome.sweeps} sweeps")
    return seconds / sweeps


def measure_case(case: Case, sweeps: int, repeat: int, device: torch.device) -> dict[str, Any]:
    per_sweep = min(time_sweeps(case, sweeps, device) for _ in range(repeat))
    return {"case": case.name, "bits": case.bits, "device": device.type,
            "threads": torch.get_num_threads(), "sweeps": sweeps, "repeat": repeat,
            "seconds_per_sweep": per_sweep,
            "candidate_samples_per_s": case.candidate_samples() / per_sweep,
            "precision_bound_s": per_sweep * MAX_SWEEPS * (1 + SEARCH_ROUNDS)}  # fmt: skip


def read_baseline(path: str) -> dict[str, float]:
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return {row["case"]: row["seconds_per_sweep"] for row in rows}


def print_table(rows: list[dict[str, Any]], baseline: dict[str, float]) -> None:
    first = rows[0]
    print(f"{first['device']}, {first['threads']} thread(s), {first['bits']} bits, "
          f"{first['sweeps']} sweep(s) a run, best of {first['repeat']}")  # fmt: skip
    print(f"{'case':<22} {'s/sweep':>8} {'candidate-samples/s':>20} {'precision <=':>13}"
          + ("  baseline s/sweep" if baseline else ""))  # fmt: skip
    for row in rows:
        line = (f"{row['case']:<22} {row['seconds_per_sweep']:>8.2f} "
                f"{row['candidate_samples_per_s']:>20.3g} "
                f"{row['precision_bound_s'] / 60:>9.1f} min")  # fmt: skip
        before = baseline.get(row["case"])
        if before is not None:
            line += f"  {before:.2f} ({before / row['seconds_per_sweep']:.2f}x)"
        print(line)
    print(
        f"precision <=: {MAX_SWEEPS} sweeps x (1 + {SEARCH_ROUNDS} rounds) searches, "
        "the rounds' retraining not counted"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    parser.add_argument("--baseline", help="a --json output to compare seconds with")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--sweeps", type=int, default=1, help="sweeps a run (default 1)")
    parser.add_argument("--repeat", type=int, default=2, help="best of R runs (default 2)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.sweeps < 1 or args.repeat < 1:
        parser.error("--sweeps and --repeat must be at least 1")
    try:
        device = resolve_device(args.device)
    except DeviceUnavailableError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = CASES
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {case.name for case in CASES})
        if unknown:
            parser.error(f"unknown case(s) {unknown}; known: {[c.name for c in CASES]}")
        cases = tuple(case for case in CASES if case.name in wanted)
    baseline = read_baseline(args.baseline) if args.baseline else {}
    rows = []
    for case in cases:
        rows.append(measure_case(case, args.sweeps, args.repeat, device))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print_table(rows, baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
