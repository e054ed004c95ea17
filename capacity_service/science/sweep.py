"""The quantization sweep (thesis 2.5): float, then falling precisions with retraining.

Each precision starts from the float weights that the previous step's retraining left
(thesis; `retrain.start` "float": from the float-trained weights), and records the
accuracy and I directly after quantization and after retraining.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from capacity_service.science.data import make_dataset
from capacity_service.science.device import resolve_device
from capacity_service.science.fixed_point import (
    apply_precision,
    clear_precision,
    current_steps,
    levels_used,
    refit_steps,
)
from capacity_service.science.metrics import mutual_information
from capacity_service.science.models import build_model, count_parameters
from capacity_service.science.seeds import derive_seed
from capacity_service.science.train import (
    EpochProgress,
    ProgressCallback,
    accuracy,
    snapshot,
    train_memorization,
)
from capacity_service.specs import SweepCurve, SweepPoint, SweepResult, SweepSpec
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
    on_retrain_epoch = on_epoch
    if spec.retrain.refit_steps:

        def on_retrain_epoch(progress: EpochProgress) -> None:
            refit_steps(model)  # the next epoch computes with the refitted D
            if on_epoch is not None:
                on_epoch(progress)

    points = []
    for bits in spec.bits:
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped before {bits} bits at N = {n}")
        if float_state is not None:
            clear_precision(model)
            model.load_state_dict(float_state)
        apply_precision(model, bits)
        quantized = accuracy(model, data)
        retrained = train_memorization(
            model,
            data,
            spec.retrain,
            derive_seed(spec.seed, f"retrain-{bits}"),
            on_retrain_epoch,
        )
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
