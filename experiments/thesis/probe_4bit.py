"""Probes behind the half-capacity discussion: why the FCDNN 64x2 loses samples at 4 bits.

Two questions the sweep's own options cannot ask, each on seed 0's data, network and
float training (as `capacity sweep` makes them; the settings of followups.sh):

- `margin EXTRA`: float training stops at 100%; does training EXTRA more epochs (the loss
  keeps falling, the margins grow) make the network survive quantization better? Then the
  sweep 8 to 4 bits with the suite's retraining (200 epochs, patience 20, D refitted).
- `from-scratch BITS`: can the BITS-bit network hold N at all? Train it quantized from its
  initial weights (D refitted after every epoch) with the float training's settings.

Each writes followups/probes/NAME.json (not a sweep file, so the report leaves it out).
Run from the repository root, one core:
    OMP_NUM_THREADS=1 .venv/bin/python experiments/thesis/probe_4bit.py margin 300
    OMP_NUM_THREADS=1 .venv/bin/python experiments/thesis/probe_4bit.py from-scratch 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.fixed_point import apply_precision, refit_steps
from capacity_service.science.models import MemorizationModel, build_model
from capacity_service.science.seeds import derive_seed
from capacity_service.science.train import (
    EpochProgress,
    MomentumSGD,
    ProgressCallback,
    _train_one_epoch,
    accuracy,
    train_memorization,
)
from capacity_service.specs import SweepSpec

OUT = Path("experiments/thesis/followups/probes")
SPEC = {  # seed 0's FCDNN 64x2 training, as in followups.sh
    "model": {"kind": "fcdnn", "width": 64, "depth": 2},
    "bits": [8, 7, 6, 5, 4],
    "train": {
        "lr": 0.020319741211370607,
        "momentum": 0.9000140663419436,
        "lr_decay": 0.29996974708192226,
        "batch_size": 128,
    },
    "retrain": {"epochs": 200, "patience": 20, "max_decays": 3},
}


def _network(spec: SweepSpec, n: int) -> tuple[Dataset, MemorizationModel]:
    """Seed 0's data and initial network, as the sweep makes them."""
    data = make_dataset(spec.model, n, derive_seed(spec.seed, "data"), torch.device("cpu"))
    model = build_model(spec.model, derive_seed(spec.seed, "init"), torch.device("cpu"))
    return data, model


def margin(spec: SweepSpec, n: int, extra: int) -> dict[str, object]:
    data, model = _network(spec, n)
    trained = train_memorization(model, data, spec.train, derive_seed(spec.seed, "shuffle"))
    optimizer = MomentumSGD(
        list(model.parameters()), lr=spec.train.lr, momentum=spec.train.momentum
    )
    generator = torch.Generator().manual_seed(derive_seed(spec.seed, "margin"))
    loss = float("nan")
    for _ in range(extra):
        loss = _train_one_epoch(model, data, optimizer, spec.train.batch_size, generator)
    points = []
    for bits in spec.bits:
        apply_precision(model, bits)
        quantized = accuracy(model, data)
        retrained = train_memorization(
            model,
            data,
            spec.retrain,
            derive_seed(spec.seed, f"retrain-{bits}"),
            _refit_after_each_epoch(model),
        )
        points.append([bits, quantized, retrained.accuracy, retrained.epochs])
    return {
        "float_accuracy": trained.accuracy,
        "float_epochs": trained.epochs,
        "extra_epochs": extra,
        "loss_after_extra": loss,
        "points (bits, quantized, retrained, retrain epochs)": points,
    }


def from_scratch(spec: SweepSpec, n: int, bits: int) -> dict[str, object]:
    data, model = _network(spec, n)
    apply_precision(model, bits)
    refit = _refit_after_each_epoch(model)
    trained = train_memorization(model, data, spec.train, derive_seed(spec.seed, "shuffle"), refit)
    return {"bits": bits, "accuracy": trained.accuracy, "epochs": trained.epochs}


def _refit_after_each_epoch(model: MemorizationModel) -> ProgressCallback:
    def refit(_progress: EpochProgress) -> None:
        refit_steps(model)  # as the sweep does by default

    return refit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("probe", choices=["margin", "from-scratch"])
    parser.add_argument("value", type=int, help="margin: extra epochs; from-scratch: bits")
    parser.add_argument("--n", type=int, default=11882, help="samples (default: half capacity)")
    args = parser.parse_args()
    spec = SweepSpec.model_validate({**SPEC, "n": args.n})
    started = time.perf_counter()
    run = margin if args.probe == "margin" else from_scratch
    result = {"probe": args.probe, "n": args.n, **run(spec, args.n, args.value)}
    result["wall_seconds"] = time.perf_counter() - started
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"fcdnn-64x2-n{args.n}-{args.probe}{args.value}.json"
    (OUT / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
