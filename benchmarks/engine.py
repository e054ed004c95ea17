"""Throughput of the batched engine against a plain sequential PyTorch loop.

For each FCDNN width and K, trains K trials for a fixed number of epochs (no early stop)
with the batched engine and with a plain loop (nn.Module + torch.optim.SGD, one trial
after another), and prints sample-epochs per second, the speedup, and the engine's
achieved GFLOP/s against this machine's measured float32 matmul peak.

    .venv/bin/python benchmarks/engine.py            # full table
    .venv/bin/python benchmarks/engine.py --quick    # under a minute
    .venv/bin/python benchmarks/engine.py --json > now.json
    .venv/bin/python benchmarks/engine.py --baseline before.json   # compare speedups
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.engine import StackedFCDNN, TrialConfig
from capacity_service.science.models import build_model
from capacity_service.specs import FCDNNSpec, TrainSpec


def matmul_peak_gflops(size: int = 1024, seconds: float = 1.0) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best, started = 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - t) / 1e9)
    return best


def configs(k: int, n: int, epochs: int, batch: int) -> list[TrialConfig]:
    # patience beyond the budget: every trial runs exactly `epochs` epochs
    train = TrainSpec(lr=0.01, epochs=epochs, batch_size=batch, patience=epochs + 1)
    return [TrialConfig(n=n, train=train, init_seed=i, shuffle_seed=1000 + i) for i in range(k)]


def batched(spec: FCDNNSpec, pool: Dataset, trials: list[TrialConfig]) -> float:
    started = time.perf_counter()
    StackedFCDNN(spec, trials, pool).train()
    return time.perf_counter() - started


def sequential(spec: FCDNNSpec, pool: Dataset, trials: list[TrialConfig]) -> float:
    """The plain loop a user would write: module, SGD, cross-entropy, accuracy per epoch."""
    started = time.perf_counter()
    for trial in trials:
        model = build_model(spec, trial.init_seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=trial.train.lr, momentum=0.9)
        generator = torch.Generator().manual_seed(trial.shuffle_seed)
        x, y = pool.x[: trial.n], pool.y[: trial.n]
        for _ in range(trial.train.epochs):
            order = torch.randperm(trial.n, generator=generator)
            for start in range(0, trial.n, trial.train.batch_size):
                batch = order[start : start + trial.train.batch_size]
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                (model(x).argmax(1) == y).float().mean().item()
    return time.perf_counter() - started


def run(
    widths: list[int], ks: list[int], n: int, epochs: int, batch: int, repeat: int
) -> list[dict[str, float]]:
    """Each time is the fastest of `repeat` runs: this machine's speed drifts by 20%."""
    peak = matmul_peak_gflops()
    warm = FCDNNSpec(width=8)  # first calls pay for allocator and kernel set-up
    warm_pool = make_dataset(warm, 64, seed=0)
    batched(warm, warm_pool, configs(2, 64, 1, batch))
    sequential(warm, warm_pool, configs(2, 64, 1, batch))
    rows = []
    for width in widths:
        spec = FCDNNSpec(width=width, depth=1)
        weights = width * width + 2 * width  # multiply-adds per sample and forward pass
        pool = make_dataset(spec, n, seed=0)
        for k in ks:
            trials = configs(k, n, epochs, batch)
            sample_epochs = k * n * epochs
            t_batched = min(batched(spec, pool, trials) for _ in range(repeat))
            t_sequential = min(sequential(spec, pool, trials) for _ in range(repeat))
            # training: forward 2, backward 4 FLOPs per weight and sample; evaluation: 2
            flops = sample_epochs * weights * (6 + 2)
            rows.append(
                {
                    "width": width,
                    "k": k,
                    "batched_samples_per_s": sample_epochs / t_batched,
                    "sequential_samples_per_s": sample_epochs / t_sequential,
                    "speedup": t_sequential / t_batched,
                    "gflops": flops / t_batched / 1e9,
                    "peak_gflops": peak,
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    parser.add_argument("--baseline", help="a --json output to compare speedups with")
    parser.add_argument("--n", type=int, default=2048, help="samples per trial")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs (quick: 1)")
    parser.add_argument("--widths", help="comma-separated widths (default 32,64,128,256)")
    parser.add_argument("--ks", help="comma-separated K values (default 1,8,32,64)")
    args = parser.parse_args()
    widths = [32, 256] if args.quick else [32, 64, 128, 256]
    ks = [1, 8, 64] if args.quick else [1, 8, 32, 64]
    if args.widths:
        widths = [int(w) for w in args.widths.split(",")]
    if args.ks:
        ks = [int(k) for k in args.ks.split(",")]
    n, epochs = (1024, 2) if args.quick else (args.n, args.epochs)
    repeat = 1 if args.quick else args.repeat
    rows = run(widths, ks, n, epochs, args.batch, repeat)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    baseline = {}
    if args.baseline:
        with open(args.baseline) as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    baseline[(row["width"], row["k"])] = row["speedup"]
    print(f"float32 matmul peak: {rows[0]['peak_gflops']:.1f} GFLOP/s; N = {n}, "
          f"{epochs} epochs, batch {args.batch}")  # fmt: skip
    header = f"{'width':>5} {'K':>3} {'batched/s':>12} {'sequential/s':>12} {'speedup':>8} "
    header += f"{'GFLOP/s':>8} {'% peak':>7}" + ("  baseline" if baseline else "")
    print(header)
    for row in rows:
        line = (
            f"{row['width']:>5} {row['k']:>3} {row['batched_samples_per_s']:>12,.0f} "
            f"{row['sequential_samples_per_s']:>12,.0f} {row['speedup']:>7.1f}x "
            f"{row['gflops']:>8.1f} {row['gflops'] / row['peak_gflops']:>7.1%}"
        )
        before = baseline.get((row["width"], row["k"]))
        if before is not None:
            line += f"  {before:.1f}x ({row['speedup'] / before - 1:+.0%})"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
