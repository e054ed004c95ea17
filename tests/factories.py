"""Small, valid result models for tests that store results without training (the store
reads results back as their kind's model, so a test stores real ones)."""

from __future__ import annotations

from typing import Any

from capacity_service.science.metrics import mutual_information
from capacity_service.specs import (
    CapacityResult,
    CurvePoint,
    SweepCurve,
    SweepPoint,
    SweepResult,
    TrialRecord,
)


def trial(index: int, n: int = 100, accuracy: float = 0.9, **fields: Any) -> TrialRecord:
    values: dict[str, Any] = {
        "index": index,
        "stage": "prior",
        "n": n,
        "lr": 0.01,
        "momentum": 0.9,
        "lr_decay": 0.3,
        "batch_size": 64,
        "seed": index,
        "accuracy": accuracy,
        "mutual_information_bits": mutual_information(n, accuracy),
        "epochs": 10,
        "wall_seconds": 1.0,
        "device": "cpu",
        "diverged": False,
    }
    return TrialRecord.model_validate(values | fields)


def capacity_result(
    params: int, bits_per_param: float, curve: list[CurvePoint] | None = None
) -> CapacityResult:
    """A capacity of `bits_per_param`, its best trial at the curve's largest I."""
    if curve is None:
        n = max(2, round(params * bits_per_param))
        curve = [CurvePoint(n=n, accuracy=1.0, mutual_information_bits=float(n))]
    peak = max(curve, key=lambda point: point.mutual_information_bits)
    best = trial(0, n=peak.n, accuracy=peak.accuracy)
    capacity = params * bits_per_param
    return CapacityResult(
        params=params,
        capacity_bits=capacity,
        bits_per_param=bits_per_param,
        conv_bits_per_param=None,
        best=best.model_copy(update={"mutual_information_bits": capacity}),
        bracket_n=peak.n,
        curve=tuple(curve),
        trials=(best,),
        engine="batched",
        wall_seconds=1.0,
        device="cpu",
        seed=0,
    )


def sweep_result(
    params: int, n: int, precision_boundary: int | None, quantized_params: int | None = None
) -> SweepResult:
    """A one-N sweep at 8 and 4 bits whose boundary is `precision_boundary`."""
    points = tuple(
        SweepPoint(
            bits=bits,
            accuracy_quantized=0.9,
            accuracy_retrained=1.0 if precision_boundary and bits >= precision_boundary else 0.9,
            mutual_information_quantized_bits=0.0,
            mutual_information_bits=0.0,
            retrain_epochs=1,
            retrain_diverged=False,
            steps={"w": 0.1},
            levels_used={"w": 4},
        )
        for bits in (8, 4)
    )
    curve = SweepCurve(n=n, float_accuracy=1.0, float_mutual_information_bits=float(n),
                       float_epochs=10, float_diverged=False, points=points,
                       precision_boundary=precision_boundary, wall_seconds=1.0)  # fmt: skip
    return SweepResult(
        params=params,
        quantized_params=quantized_params or params,
        regime="full",
        tolerance=0.005,
        device="cpu",
        seed=0,
        curves=(curve,),
        wall_seconds=1.0,
    )
