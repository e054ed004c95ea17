"""The thesis's half-capacity network, FCDNN 128x3 at N = 2^16, at 4 bits with the sweep's
defaults, step by step: what `capacity sweep` does for `bits: [4]` (same seeds, same
calls as `sweep.sweep_at`), printing each step's accuracy as it ends: the float
training, direct quantization, the incremental retraining, the code search, then the
search rounds (their retraining's progress every 100 epochs). A full sweep (8 to 4 bits,
each with its search and rounds) takes hours on a CPU; this one precision, straight from
the float network, says where the defaults leave the network, and each line survives a
run stopped early. The float training and retraining settings are those of
`followups.sh`'s 128x3 runs and the suite's half-capacity retraining (200 epochs,
patience 20, 3 decays).

    OMP_NUM_THREADS=2 .venv/bin/python experiments/thesis/probe_128x3.py --threads 2 \
        | tee experiments/thesis/followups/probes/fcdnn-128x3-n65536-4bits-defaults.log
"""

from __future__ import annotations

import argparse
import time

import torch

from capacity_service.science.code_search import search_codes
from capacity_service.science.data import make_dataset
from capacity_service.science.fixed_point import apply_precision
from capacity_service.science.models import FCDNN, build_model
from capacity_service.science.seeds import derive_seed
from capacity_service.science.sweep import retrain_incrementally, search_rounds
from capacity_service.science.train import EpochProgress, accuracy, train_memorization
from capacity_service.specs import SweepSpec

SPEC = {
    "model": {"kind": "fcdnn", "width": 128, "depth": 3},
    "n": 65536,
    "bits": [4],
    "train": {"lr": 0.02, "batch_size": 128, "epochs": 600},
    "retrain": {"epochs": 200, "patience": 20, "max_decays": 3},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = SweepSpec.model_validate({**SPEC, "seed": args.seed})
    assert isinstance(spec.n, int)
    started = time.perf_counter()

    def say(what: str) -> None:
        print(f"{time.perf_counter() - started:7.0f} s  {what}", flush=True)

    def every_100(progress: EpochProgress) -> None:
        if progress.epoch % 100 == 0:
            say(f"  epoch {progress.epoch}: {progress.accuracy:.4%} (lr {progress.lr:.3g})")

    say(f"spec {spec.model_dump_json(include={'model', 'n', 'train', 'retrain'})}")
    data = make_dataset(spec.model, spec.n, derive_seed(spec.seed, "data"))
    model = build_model(spec.model, derive_seed(spec.seed, "init"))
    assert isinstance(model, FCDNN)
    trained = train_memorization(model, data, spec.train, derive_seed(spec.seed, "shuffle"))
    say(f"float: {trained.accuracy:.4%} after {trained.epochs} epochs")
    bits = spec.bits[0]
    apply_precision(model, bits)
    quantized = accuracy(model, data)
    say(f"{bits} bits, quantized: {quantized:.4%}")
    seed = derive_seed(spec.seed, f"retrain-{bits}")
    retrained = retrain_incrementally(model, data, spec.retrain, seed, quantized, every_100)
    say(f"retrained incrementally: {retrained.accuracy:.4%} after {retrained.epochs} epochs")
    if retrained.diverged or retrained.accuracy == 1.0:
        return  # where the sweep searches no codes either
    searched = search_codes(model, data)
    say(f"code search: {searched.accuracy:.4%}, {searched.changes} codes changed in "
        f"{searched.sweeps} sweeps ({round(data.n * (1 - searched.accuracy))} missed)")  # fmt: skip
    refined = search_rounds(model, data, spec.retrain, seed, searched, every_100)
    say(f"search rounds: {refined.accuracy:.4%}, {refined.rounds_kept} kept, "
        f"{refined.epochs} epochs, {round(data.n * (1 - refined.accuracy))} missed")  # fmt: skip


if __name__ == "__main__":
    main()
