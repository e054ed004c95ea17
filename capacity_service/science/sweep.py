"""The quantization sweep (thesis 2.5): float, then falling precisions with retraining.

Each precision starts from the float weights that the previous step's retraining left
(thesis; `retrain.start` "float": from the float-trained weights), and records the
accuracy and I directly after quantization and after retraining. Retraining is
incremental by default (`retrain.method`, `fixed_point.freeze_share`): on FCDNN 64x2 at
full capacity (seed 0, N = 23,765, float 100%; up to 200 epochs a stage) it kept 100 /
99.98 / 98.43% at 8 / 7 / 6 bits where the straight-through retraining with D refitted
kept 99.98 / 99.45 / 96.28% of the same float network; at half capacity 98.55% at 4 bits
against 94.26%. After retraining, an FCDNN's last hidden layer's codes are searched
(`retrain.code_search`, science/code_search.py), where it still misses samples, and then,
while it misses any, rounds retrain that layer again with the others fixed and search
again (`retrain.search_rounds`, `search_rounds`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from capacity_service.science.code_search import CodeSearchOutcome, search_codes, searched_layer
from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.device import resolve_device
from capacity_service.science.fixed_point import (
    apply_precision,
    clear_precision,
    current_steps,
    fix_other_groups,
    freeze_share,
    levels_used,
    refit_steps,
    thaw,
)
from capacity_service.science.metrics import mutual_information
from capacity_service.science.models import (
    FCDNN,
    MemorizationModel,
    build_model,
    count_parameters,
)
from capacity_service.science.schedule import TrainOutcome
from capacity_service.science.seeds import derive_seed
from capacity_service.science.train import (
    EpochProgress,
    ProgressCallback,
    accuracy,
    snapshot,
    train_memorization,
)
from capacity_service.specs import RetrainSpec, SweepCurve, SweepPoint, SweepResult, SweepSpec
from capacity_service.stopping import StopCheck, Stopped

PointCallback = Callable[[int, SweepPoint], None]  # (N, point)


def sweep(
    spec: SweepSpec,
    on_epoch: ProgressCallback | None = None,
    on_point: PointCallback | None = None,
    should_stop: StopCheck | None = None,
) -> SweepResult:
    """Run the sweep at every N of `spec` and name each curve's precision boundary.
    `should_stop` is asked before each precision; Stopped when it says so."""
    started = time.perf_counter()
    device = resolve_device(spec.device)
    counted = count_parameters(spec.model)
    curves = tuple(
        sweep_at(spec, n, device, on_epoch, on_point, should_stop) for n in spec.sample_counts()
    )
    regime: str = spec.regime or ("list" if isinstance(spec.n, list) else "n")
    return SweepResult(
        params=counted.total,
        quantized_params=counted.quantizable,
        regime=regime,
        tolerance=spec.tolerance,
        device=str(device),
        seed=spec.seed,
        curves=curves,
        wall_seconds=time.perf_counter() - started,
    )


def sweep_at(
    spec: SweepSpec,
    n: int,
    device: torch.device,
    on_epoch: ProgressCallback | None = None,
    on_point: PointCallback | None = None,
    should_stop: StopCheck | None = None,
) -> SweepCurve:
    started = time.perf_counter()
    data = make_dataset(spec.model, n, derive_seed(spec.seed, "data"), device)
    model = build_model(spec.model, derive_seed(spec.seed, "init"), device)
    trained = train_memorization(
        model, data, spec.train, derive_seed(spec.seed, "shuffle"), on_epoch
    )
    float_information = 0.0 if trained.diverged else mutual_information(n, trained.accuracy)
    # kept only when every precision restarts from it
    float_state = snapshot(model) if spec.retrain.start == "float" else None
    points = []
    for bits in spec.bits:
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped before {bits} bits at N = {n}")
        if float_state is not None:
            clear_precision(model)
            model.load_state_dict(float_state)
        apply_precision(model, bits)
        quantized = accuracy(model, data)
        seed = derive_seed(spec.seed, f"retrain-{bits}")
        if spec.retrain.method == "incremental":
            retrained = retrain_incrementally(model, data, spec.retrain, seed, quantized, on_epoch)
        else:
            retrained = retrain_through(model, data, spec.retrain, seed, on_epoch)
        refined = _search_codes(model, data, spec.retrain, retrained, seed, on_epoch,
                                should_stop)  # fmt: skip
        if refined is not None:
            retrained = replace(retrained, accuracy=refined.accuracy,
                                epochs=retrained.epochs + refined.epochs)  # fmt: skip
        steps = current_steps(model)  # the best weights' D (refitted or not)
        point = SweepPoint(
            bits=bits,
            accuracy_quantized=quantized,
            accuracy_retrained=retrained.accuracy,
            mutual_information_quantized_bits=mutual_information(n, quantized),
            mutual_information_bits=(
                0.0 if retrained.diverged else mutual_information(n, retrained.accuracy)
            ),
            retrain_epochs=retrained.epochs,
            retrain_diverged=retrained.diverged,
            steps=steps,
            levels_used=levels_used(model, bits, steps),
            code_changes=None if refined is None else refined.code_changes,
            search_rounds_kept=None if refined is None else refined.rounds_kept,
        )
        points.append(point)
        if on_point is not None:
            on_point(n, point)
    clear_precision(model)
    return SweepCurve(
        n=n,
        float_accuracy=trained.accuracy,
        float_mutual_information_bits=float_information,
        float_epochs=trained.epochs,
        float_diverged=trained.diverged,
        points=tuple(points),
        precision_boundary=precision_boundary(trained.accuracy, points, spec.tolerance),
        wall_seconds=time.perf_counter() - started,
    )


def _search_codes(
    model: MemorizationModel,
    data: Dataset,
    retrain: RetrainSpec,
    retrained: TrainOutcome,
    seed: int,
    on_epoch: ProgressCallback | None,
    should_stop: StopCheck | None,
) -> Refinement | None:
    """The code search and its rounds after retraining, where they apply: an FCDNN that
    retrained (not direct quantization, not diverged) and still misses samples."""
    if not retrain.code_search or retrain.epochs == 0 or not isinstance(model, FCDNN):
        return None
    if retrained.diverged or retrained.accuracy == 1.0:
        return None
    searched = search_codes(model, data)
    return search_rounds(model, data, retrain, seed, searched, on_epoch, should_stop)


@dataclass(frozen=True)
class Refinement:
    accuracy: float
    code_changes: int  # by every search kept
    rounds_kept: int  # search rounds that held more samples
    epochs: int  # every round's retraining epochs, kept or undone


def search_rounds(
    model: FCDNN,
    data: Dataset,
    retrain: RetrainSpec,
    seed: int,
    searched: CodeSearchOutcome,
    on_epoch: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> Refinement:
    """Up to `retrain.search_rounds` rounds after the code search, while samples are
    missed: each retrains the last hidden layer incrementally again, every other layer
    fixed at its codes (the float rest, biases and output layer, retrains with it), then
    searches its codes again. The search's optimum is local; a round moves the layer to
    another start, fitted to the fixed layers below. A round that ends holding no more
    samples is undone and ends the rounds. `should_stop` is asked before each round (a
    round takes minutes at N in the tens of thousands); Stopped when it says so."""
    held, changes, kept, epochs = searched.accuracy, searched.changes, 0, 0
    last = searched_layer(model)
    settings = retrain.model_copy(update={"lr": retrain.search_round_lr})
    for index in range(retrain.search_rounds):
        if held == 1.0:
            break
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped before search round {index + 1}")
        before = snapshot(model)
        fix_other_groups(model, last)
        # 0: the stages' end is compared after the search, below, not before it
        stages = retrain_incrementally(model, data, settings, derive_seed(seed, f"round-{index}"),
                                       0.0, on_epoch)  # fmt: skip
        epochs += stages.epochs
        found = None if stages.diverged else search_codes(model, data)
        if found is None or found.accuracy <= held:
            model.load_state_dict(before)
            break
        held, changes, kept = found.accuracy, changes + found.changes, kept + 1
    return Refinement(accuracy=held, code_changes=changes, rounds_kept=kept, epochs=epochs)


def retrain_through(
    model: MemorizationModel,
    data: Dataset,
    retrain: RetrainSpec,
    seed: int,
    on_epoch: ProgressCallback | None = None,
) -> TrainOutcome:
    """Straight-through retraining of the quantized `model` (every weight computes in
    fixed point, the gradient goes to the float weights), D refitted after every epoch
    where `retrain.refit_steps` says so. The trainer keeps the best weights, the starting
    ones included."""
    on_retrain_epoch = on_epoch
    if retrain.refit_steps:

        def on_retrain_epoch(progress: EpochProgress) -> None:
            refit_steps(model)  # the next epoch computes with the refitted D
            if on_epoch is not None:
                on_epoch(progress)

    return train_memorization(model, data, retrain, seed, on_retrain_epoch)


def retrain_incrementally(
    model: MemorizationModel,
    data: Dataset,
    retrain: RetrainSpec,
    seed: int,
    quantized: float,
    on_epoch: ProgressCallback | None = None,
) -> TrainOutcome:
    """Incremental retraining of the quantized `model`: for each share of
    `retrain.stages`, fix that share of every group at its codes (`freeze_share`, D as
    quantized) and retrain the rest in float, until every weight is fixed. Where that ends
    below the `quantized` accuracy the model goes back to its starting weights, so, as
    with the straight-through retraining, it never ends worse than it began. A stage that
    diverges ends the retraining (diverged), every weight then fixed."""
    started = time.perf_counter()
    start = snapshot(model)
    epochs, diverged, lr = 0, False, retrain.lr
    for index, share in enumerate(retrain.stages[:-1]):  # the last, 1, leaves none to train
        freeze_share(model, share)
        stage = train_memorization(model, data, retrain, derive_seed(seed, f"stage-{index}"),
                                   on_epoch)  # fmt: skip
        epochs, diverged, lr = epochs + stage.epochs, stage.diverged, stage.final_lr
        if diverged:
            break
    freeze_share(model, 1.0)
    ended = accuracy(model, data)
    thaw(model)  # all fixed: the plain fixed-point model again
    if ended < quantized and not diverged:
        model.load_state_dict(start)
        ended = quantized
    return TrainOutcome(accuracy=ended, epochs=epochs, diverged=diverged,
                        wall_seconds=time.perf_counter() - started, final_lr=lr)  # fmt: skip


def precision_boundary(
    float_accuracy: float, points: list[SweepPoint], tolerance: float
) -> int | None:
    """The smallest precision such that it and every higher one tried keep the retrained
    accuracy within `tolerance` of the float accuracy; None when the highest fails."""
    boundary = None
    for point in sorted(points, key=lambda p: -p.bits):
        if point.accuracy_retrained < float_accuracy - tolerance:
            break
        boundary = point.bits
    return boundary
