"""The sequential trainer (`capacity measure`, quantization sweeps) with and without the
engine's C kernels, for the recurrent kinds and the CNN.

Each case runs the same training twice in this process, alternating, best of R: once
through the engine's C kernels (`kernel_path.KernelPath`, the default on a CPU) and
once through the model's own forward and autograd (`CAPACITY_NATIVE_KERNELS=0`). Epoch
budgets are fixed (patience above them), so both runs do the same number of epochs; their
accuracies agree up to floating-point reassociation.

    .venv/bin/python benchmarks/sequential.py                 # the table
    .venv/bin/python benchmarks/sequential.py --threads 1     # as one worker stream
    .venv/bin/python benchmarks/sequential.py --json > before
    .venv/bin/python benchmarks/sequential.py --baseline before  # compare speedups
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from capacity_service.science.kernel_path import KernelPath
from capacity_service.science.measure import measure
from capacity_service.science.models import build_model
from capacity_service.science.sweep import sweep
from capacity_service.specs import MeasureSpec, RNNSpec, SweepSpec

_ENABLED = "CAPACITY_NATIVE_KERNELS"


@dataclass(frozen=True)
class Case:
    name: str
    model: dict[str, Any]
    batch: int
    sweep: bool = False

    def run(self, n: int, epochs: int) -> float:
        """Train once; the accuracy reached (the last precision's, for a sweep)."""
        train = {"lr": 0.05, "momentum": 0.9, "batch_size": self.batch, "epochs": epochs,
                 "patience": epochs + 1}  # fmt: skip
        if not self.sweep:
            spec = MeasureSpec.model_validate({"model": self.model, "n": n, "train": train})
            return measure(spec).accuracy
        sweep_spec = SweepSpec.model_validate({
            "model": self.model, "n": n, "bits": [8, 4], "train": train,
            "retrain": {"epochs": epochs, "patience": epochs + 1},
        })  # fmt: skip
        return sweep(sweep_spec).curves[0].points[-1].accuracy_retrained


LSTM_32 = {"kind": "lstm", "hidden": 32}
CNN_3X3 = {"kind": "cnn", "kernel": 3, "channels": 4}
CASES = (
    Case("measure lstm-32", LSTM_32, 128),
    Case("measure lstm-32 b32", LSTM_32, 32),
    Case("measure gru-38", {"kind": "gru", "hidden": 38}, 128),
    Case("measure rnn-75", {"kind": "rnn", "hidden": 75}, 128),
    Case("measure cnn-3x3", CNN_3X3, 64),
    Case("measure cnn-5x5", {"kind": "cnn", "kernel": 5, "channels": 4}, 64),
    Case("sweep lstm-32 8,4 bits", LSTM_32, 128, sweep=True),
    Case("sweep cnn-3x3 8,4 bits", CNN_3X3, 64, sweep=True),
)


def timed(run: Callable[[], float], kernels: bool) -> tuple[float, float]:
    os.environ[_ENABLED] = "1" if kernels else "0"
    started = time.perf_counter()
    accuracy = run()
    return time.perf_counter() - started, accuracy


def measure_case(case: Case, n: int, epochs: int, repeat: int) -> dict[str, Any]:
    best = {True: (float("inf"), 0.0), False: (float("inf"), 0.0)}
    for _ in range(repeat):
        for kernels in (True, False):
            seconds, accuracy = timed(lambda: case.run(n, epochs), kernels)
            if seconds < best[kernels][0]:
                best[kernels] = (seconds, accuracy)
    (fast, fast_accuracy), (slow, slow_accuracy) = best[True], best[False]
    return {"case": case.name, "model": case.model, "batch": case.batch,
            "n": n, "epochs": epochs, "threads": torch.get_num_threads(),
            "kernels_s": fast, "module_s": slow, "speedup": slow / fast,
            "kernels_accuracy": fast_accuracy, "module_accuracy": slow_accuracy}  # fmt: skip


def read_baseline(path: str) -> dict[str, float]:
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return {row["case"]: row["speedup"] for row in rows}


def print_table(rows: list[dict[str, Any]], baseline: dict[str, float], repeat: int) -> None:
    first = rows[0]
    print(f"N = {first['n']}, {first['epochs']} epochs (a sweep: float and each precision), "
          f"{first['threads']} thread(s), best of {repeat}")  # fmt: skip
    print(f"{'case':<24} {'kernels':>8} {'module':>8} {'speedup':>8} {'accuracy':>17}"
          + ("  baseline" if baseline else ""))  # fmt: skip
    for row in rows:
        line = (f"{row['case']:<24} {row['kernels_s']:>7.2f}s {row['module_s']:>7.2f}s "
                f"{row['speedup']:>7.2f}x {row['kernels_accuracy']:>8.2%} "
                f"{row['module_accuracy']:>8.2%}")  # fmt: skip
        before = baseline.get(row["case"])
        if before is not None:
            line += f"  {before:.2f}x ({row['speedup'] / before - 1:+.0%})"
        print(line)
    print("kernels: through the engine's C kernels; module: the model's forward and autograd")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    parser.add_argument("--baseline", help="a --json output to compare speedups with")
    parser.add_argument("--n", type=int, default=4096, help="samples (default 4096)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    parser.add_argument("--repeat", type=int, default=2, help="best of R runs (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ[_ENABLED] = "1"
    lstm = build_model(RNNSpec.model_validate(LSTM_32), 0)
    if KernelPath.find(lstm, torch.device("cpu")) is None:
        parser.error("no C kernels here (no compiler, or no BLAS sgemm in torch)")
    baseline = read_baseline(args.baseline) if args.baseline else {}
    rows = []
    for case in CASES:
        rows.append(measure_case(case, args.n, args.epochs, args.repeat))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print_table(rows, baseline, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
