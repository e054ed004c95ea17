"""Probes behind the half-capacity discussion: why the FCDNN 64x2 loses samples at 4 bits.

Two questions the sweep's own options cannot ask, each on seed 0's data, network and
float training (as `capacity sweep` makes them; the settings of followups.sh):

- `margin EXTRA`: float training stops at 100%; does training EXTRA more epochs (the loss
  keeps falling, the margins grow) make the network survive quantization better? Then the
  sweep 8 to 4 bits with the suite's retraining (200 epochs, patience 20, D refitted).
- `from-scratch BITS`: can the BITS-bit network hold N at all? Train it quantized from its
  initial weights (D refitted after every epoch) with the float training's settings.

- `incremental VARIANT`: the incremental retraining (the sweep's default) 8 to 4 bits,
  each precision's stages logged, with one change against the sweep's (`plain`):
  `settle` starts each precision from the previous one's fixed-point values instead of
  its float weights (the fixed share's float values stop training when it is fixed);
  `by-error` / `by-error-desc` fix the weights nearest to / farthest from their level
  first instead of the largest; `margin` trains a stage that reached 100% 50 epochs more
  (lower loss, larger margins) before the next share is fixed; `polish` retrains the
  all-fixed network straight through afterwards (D fixed); `final` trains once more with
  every quantized weight fixed (the float rest: biases and the output layer);
  `second-pass`, after the stages, frees the 12.5% of each group whose straight-through
  gradient on the whole data is largest (the float weights set to their fixed-point
  values first) and fixes them again through the stages above 87.5%. `--lr`,
  `--patience`, `--batch` set the stages' rate, patience and batch size, `--stages` the
  shares, `--bits 8,7,6` the precisions, `--suite-seed S` the suite's stored half-capacity
  network of seed S (its training, seed and N) instead of seed 0's at N = 11,882;
  `--code-search` runs the sweep's code search (science/code_search.py) after the last
  precision.
- `anneal GROWTH`: soft-to-hard instead of fixing weights: from the float network, train
  on with a penalty pulling every quantized weight to its nearest 4-bit level, its weight
  growing by GROWTH an epoch (`--lam0`, `--lr`, `--epochs`; `--suite-seed` as above).

Each writes followups/probes/NAME.json (not a sweep file, so the report leaves it out).
Run from the repository root, one core:
    OMP_NUM_THREADS=1 .venv/bin/python experiments/thesis/probe_4bit.py margin 300
    OMP_NUM_THREADS=1 .venv/bin/python experiments/thesis/probe_4bit.py from-scratch 4
    OMP_NUM_THREADS=1 .venv/bin/python experiments/thesis/probe_4bit.py incremental settle --lr 0.01
    OMP_NUM_THREADS=1 .venv/bin/python experiments/thesis/probe_4bit.py incremental plain \
        --lr 0.01 --suite-seed 0 --code-search
    OMP_NUM_THREADS=1 .venv/bin/python experiments/thesis/probe_4bit.py anneal 1.007 \
        --lr 0.01 --epochs 1500 --suite-seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from capacity_service.science import fixed_point
from capacity_service.science.code_search import search_codes
from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.fixed_point import apply_precision, quantizable_groups, refit_steps
from capacity_service.science.models import MemorizationModel, build_model
from capacity_service.science.quantize import lloyd_max_refine, lloyd_max_step, quantize
from capacity_service.science.seeds import derive_seed
from capacity_service.science.sweep import retrain_through
from capacity_service.science.train import (
    EpochProgress,
    MomentumSGD,
    ProgressCallback,
    _train_one_epoch,
    accuracy,
    train_memorization,
)
from capacity_service.specs import RetrainSpec, SweepSpec

OUT = Path("experiments/thesis/followups/probes")
SUITE_HALF = "experiments/thesis/results/fcdnn-64x2-half.seed{seed}.json"
VARIANTS = ("plain", "settle", "by-error", "by-error-desc", "margin", "polish", "final",
            "second-pass")  # fmt: skip
SECOND_PASS_FREE = 0.125  # the share a second pass trains in float again
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


def incremental(
    spec: SweepSpec, n: int, variant: str, code_search: bool = False
) -> dict[str, object]:
    """The sweep's incremental retraining written out stage by stage, with `variant`'s one
    change; returns every precision's accuracies and the last precision's stages. With
    `code_search`, the sweep's code search runs after the last precision's retraining."""
    data, model = _network(spec, n)
    trained = train_memorization(model, data, spec.train, derive_seed(spec.seed, "shuffle"))
    retrain, points = spec.retrain, []
    stages: list[list[float]] = []
    for bits in spec.bits:
        apply_precision(model, bits)
        quantized = accuracy(model, data)
        seed = derive_seed(spec.seed, f"retrain-{bits}")
        stages = []
        for index, share in enumerate(retrain.stages[:-1]):
            _fix_share(model, share, variant)
            fixed = accuracy(model, data)
            stage = train_memorization(model, data, retrain, derive_seed(seed, f"stage-{index}"))
            if variant == "margin" and stage.accuracy == 1.0:
                _train_on(
                    model, data, retrain, stage.final_lr, derive_seed(seed, f"margin-{index}")
                )
            stages.append([share, fixed, accuracy(model, data), stage.epochs])
        _fix_share(model, 1.0, variant)
        if variant == "final":  # only the unquantized parameters can still move
            train_memorization(model, data, retrain, derive_seed(seed, "final"))
        ended = accuracy(model, data)
        if variant == "second-pass":  # logged as a stage: the share fixed while it trains
            first = ended
            ended, epochs = _second_pass(model, data, retrain, derive_seed(seed, "second-pass"))
            stages.append([1.0 - SECOND_PASS_FREE, first, ended, epochs])
        fixed_point.thaw(model)
        if variant == "settle":
            _settle(model)
        if variant == "polish":
            through = retrain.model_copy(
                update={"method": "straight_through", "refit_steps": False}
            )
            ended = retrain_through(model, data, through, derive_seed(seed, "polish")).accuracy
        points.append([bits, quantized, ended])
    searched = {}
    if code_search:
        started = time.perf_counter()
        found = search_codes(model, data)
        searched = {"code search (before, after, changes, sweeps, seconds)": [
            ended, found.accuracy, found.changes, found.sweeps,
            time.perf_counter() - started]}  # fmt: skip
    return {
        **searched,
        "variant": variant,
        "retrain": retrain.model_dump(mode="json"),
        "float_accuracy": trained.accuracy,
        "float_epochs": trained.epochs,
        "points (bits, quantized, retrained)": points,
        "last precision's stages (share, fixed, retrained, epochs)": stages,
    }


def anneal(
    spec: SweepSpec, n: int, growth: float, lr: float, lam0: float, epochs: int
) -> dict[str, object]:
    """Soft-to-hard: from the float network, train on with a penalty pulling each
    quantized group's weights to their nearest level, lam * mean(((W - D codes) / D)^2),
    lam growing by `growth` an epoch from `lam0` (D refitted after each epoch, momentum
    SGD at `lr`, batch 32); the fixed-point network's best accuracy over the epochs."""
    data, model = _network(spec, n)
    trained = train_memorization(model, data, spec.train, derive_seed(spec.seed, "shuffle"))
    bits = spec.bits[-1]
    weights = {name: fixed_point.float_weight(model, name) for name in quantizable_groups(model)}
    steps = {name: lloyd_max_step(weight, bits) for name, weight in weights.items()}
    total = sum(weight.numel() for weight in weights.values())

    @torch.no_grad()
    def fixed_accuracy() -> float:
        floats = {name: weight.clone() for name, weight in weights.items()}
        for name, weight in weights.items():
            weight.copy_(quantize(weight, bits, steps[name]))
        held = accuracy(model, data)
        for name, weight in weights.items():
            weight.copy_(floats[name])
        return held

    quantized = best = fixed_accuracy()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(derive_seed(spec.seed, "anneal"))
    lam, curve = lam0, []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, 32):
            batch = order[start : start + 32]
            loss = torch.nn.functional.cross_entropy(model(data.x[batch]), data.y[batch])
            for name, weight in weights.items():
                level = quantize(weight, bits, steps[name]).detach()
                loss = loss + lam * (((weight - level) / steps[name]) ** 2).sum() / total
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        steps = {name: lloyd_max_refine(w, bits, steps[name]) for name, w in weights.items()}
        lam *= growth
        held = fixed_accuracy()
        best = max(best, held)
        if epoch % 100 == 0 or held == 1.0:
            curve.append([epoch, lam, accuracy(model, data), held])
        if held == 1.0:
            break
    return {
        "bits": bits,
        "growth": growth,
        "lr": lr,
        "lam0": lam0,
        "float_accuracy": trained.accuracy,
        "quantized": quantized,
        "best fixed-point accuracy": best,
        "every 100 epochs (epoch, lam, float accuracy, fixed-point accuracy)": curve,
    }


def _settle(model: MemorizationModel) -> None:
    """Every quantized group's float weights take their fixed-point values."""
    with torch.no_grad():
        for name, quantizer in fixed_point._quantizers(model).items():
            weight = fixed_point.float_weight(model, name)
            weight.copy_(quantize(weight, quantizer.bits, quantizer.step))


def _second_pass(
    model: MemorizationModel, data: Dataset, retrain: RetrainSpec, seed: int
) -> tuple[float, int]:
    """Free the SECOND_PASS_FREE share of each group with the largest straight-through
    gradient and fix it again stage by stage; returns the accuracy, all fixed, and the
    epochs trained."""
    fixed_point.thaw(model)
    _settle(model)
    model.zero_grad()
    chunk = 4096  # samples a forward pass: the whole data's gradient, summed
    for start in range(0, data.n, chunk):
        logits = model(data.x[start : start + chunk])
        torch.nn.functional.cross_entropy(
            logits, data.y[start : start + chunk], reduction="sum"
        ).backward()
    for name, quantizer in fixed_point._quantizers(model).items():
        weight = fixed_point.float_weight(model, name)
        assert weight.grad is not None
        grad = weight.grad.abs().flatten()
        frozen = torch.ones_like(grad, dtype=torch.bool)
        frozen[grad.topk(round(SECOND_PASS_FREE * grad.numel())).indices] = False
        quantizer.frozen = frozen.view_as(weight)
    model.zero_grad()
    later = [share for share in retrain.stages if share > 1.0 - SECOND_PASS_FREE]
    epochs = 0
    for index, share in enumerate(later[:-1]):
        epochs += train_memorization(
            model, data, retrain, derive_seed(seed, f"stage-{index}")
        ).epochs
        fixed_point.freeze_share(model, share)
    epochs += train_memorization(model, data, retrain, derive_seed(seed, "last")).epochs
    fixed_point.freeze_share(model, 1.0)
    return accuracy(model, data), epochs


def _fix_share(model: MemorizationModel, share: float, variant: str) -> None:
    """`fixed_point.freeze_share`, or its order by distance to the nearest level."""
    if not variant.startswith("by-error"):
        fixed_point.freeze_share(model, share)
        return
    for name, quantizer in fixed_point._quantizers(model).items():
        weight = fixed_point.float_weight(model, name).detach()
        frozen = quantizer.frozen
        if frozen is None:
            frozen = torch.zeros_like(weight, dtype=torch.bool)
        more = round(share * weight.numel()) - int(frozen.sum())
        if more > 0:
            error = (weight - quantize(weight, quantizer.bits, quantizer.step)).abs()
            rank = (error if variant == "by-error-desc" else -error).masked_fill(frozen, -1e9)
            frozen = frozen.flatten().clone()
            frozen[rank.flatten().topk(more).indices] = True
            frozen = frozen.view_as(weight)
        quantizer.frozen = frozen


def _train_on(
    model: MemorizationModel, data: Dataset, retrain: RetrainSpec, lr: float, seed: int
) -> None:
    optimizer = MomentumSGD(list(model.parameters()), lr=lr, momentum=retrain.momentum)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(50):
        _train_one_epoch(model, data, optimizer, retrain.batch_size, generator)


def _refit_after_each_epoch(model: MemorizationModel) -> ProgressCallback:
    def refit(_progress: EpochProgress) -> None:
        refit_steps(model)  # as the sweep does by default

    return refit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("probe", choices=["margin", "from-scratch", "incremental", "anneal"])
    parser.add_argument(
        "value",
        help="margin: extra epochs; from-scratch: bits; anneal: the penalty's growth an "
        "epoch; incremental: " + ", ".join(VARIANTS),
    )
    parser.add_argument("--n", type=int, default=11882, help="samples (default: half capacity)")
    parser.add_argument(
        "--lr", type=float, default=0.002, help="incremental: the stages' rate; anneal: the rate"
    )
    parser.add_argument("--patience", type=int, default=20, help="incremental: the stages'")
    parser.add_argument("--batch", type=int, default=32, help="incremental: the stages'")
    parser.add_argument("--stages", default="", help="incremental: shares, e.g. 0.5,0.75,1")
    parser.add_argument("--bits", default="8,6,5,4", help="incremental: the precisions")
    parser.add_argument(
        "--suite-seed",
        type=int,
        help="incremental, anneal: that seed's stored fcdnn-64x2-half network and N instead "
        "of seed 0's",
    )
    parser.add_argument(
        "--code-search", action="store_true", help="incremental: then the code search"
    )
    parser.add_argument("--lam0", type=float, default=0.01, help="anneal: the first penalty")
    parser.add_argument("--epochs", type=int, default=700, help="anneal: epochs")
    args = parser.parse_args()
    started = time.perf_counter()
    n = args.n
    base, network = dict(SPEC), f"n{n}"
    if args.suite_seed is not None:
        stored = json.loads(Path(SUITE_HALF.format(seed=args.suite_seed)).read_text())["spec"]
        base.update(model=stored["model"], train=stored["train"], seed=stored["seed"])
        n, network = stored["capacity_n"] // 2, f"suite-half-seed{args.suite_seed}"
    if args.probe == "anneal":
        spec = SweepSpec.model_validate({**base, "n": n, "bits": [4]})
        found = anneal(spec, n, float(args.value), args.lr, args.lam0, args.epochs)
        name = f"fcdnn-64x2-{network}-anneal{args.value}-lr{args.lr:g}-lam{args.lam0:g}"
        name += f"-e{args.epochs}"
    elif args.probe == "incremental":
        if args.value not in VARIANTS:
            parser.error(f"incremental: VALUE must be one of {', '.join(VARIANTS)}")
        retrain = {"lr": args.lr, "epochs": max(200, 10 * args.patience),
                   "patience": args.patience, "max_decays": 3,
                   "batch_size": args.batch}  # fmt: skip
        if args.stages:
            retrain["stages"] = [float(s) for s in args.stages.split(",")]
        bits = [int(b) for b in args.bits.split(",")]
        spec = SweepSpec.model_validate({**base, "n": n, "bits": bits, "retrain": retrain})
        found = incremental(spec, n, args.value, args.code_search)
        name = f"fcdnn-64x2-{network}-incremental-{args.value}-lr{args.lr:g}"
        name += f"-p{args.patience}" if args.patience != 20 else ""
        name += f"-b{args.batch}" if args.batch != 32 else ""
        name += f"-stages{args.stages.replace(',', '_')}" if args.stages else ""
        name += f"-bits{args.bits.replace(',', '')}" if args.bits != "8,6,5,4" else ""
        name += "-code-search" if args.code_search else ""
    else:
        spec = SweepSpec.model_validate({**SPEC, "n": n})
        run = margin if args.probe == "margin" else from_scratch
        found = run(spec, n, int(args.value))
        name = f"fcdnn-64x2-n{n}-{args.probe}{args.value}"
    result = {"probe": args.probe, "n": n, **found}
    result["wall_seconds"] = time.perf_counter() - started
    OUT.mkdir(parents=True, exist_ok=True)
    name += ".json"
    (OUT / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
