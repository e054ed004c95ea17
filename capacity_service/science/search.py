"""Searching N: find the sample count whose training gives the largest I.

I(N) rises with N while the model memorizes everything (I = N), peaks near capacity and
falls once accuracy collapses. `search_n` grows N geometrically until I drops, then
narrows the bracket around the peak by golden-section steps on the integers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from capacity_service.science.measure import measure
from capacity_service.science.models import count_parameters
from capacity_service.science.train import ProgressCallback
from capacity_service.specs import CurvePoint, MeasureResult, MeasureSpec, NSearchResult

TrialCallback = Callable[[MeasureResult], None]
GOLDEN = 0.381966  # 2 - golden ratio: the golden-section probe fraction


def capacity_curve(trials: list[MeasureResult]) -> tuple[CurvePoint, ...]:
    """The best accuracy and I per N tried, ordered by N."""
    best: dict[int, MeasureResult] = {}
    for trial in trials:
        kept = best.get(trial.n)
        if kept is None or trial.mutual_information_bits > kept.mutual_information_bits:
            best[trial.n] = trial
    return tuple(
        CurvePoint(n=n, accuracy=t.accuracy, mutual_information_bits=t.mutual_information_bits)
        for n, t in sorted(best.items())
    )


def search_n(
    spec: MeasureSpec,
    *,
    growth: float = 2.0,
    tolerance: float = 0.05,
    max_trials: int = 12,
    on_trial: TrialCallback | None = None,
    on_epoch: ProgressCallback | None = None,
) -> NSearchResult:
    """The N with the largest I at the hyperparameters of `spec` (its `n` is ignored).

    Starts at N = the parameter count, multiplies N by `growth` while I still rises, then
    bisects the bracket around the best N until it is narrower than `tolerance` times N or
    `max_trials` trainings have run.
    """
    if growth <= 1.0:
        raise ValueError(f"growth must be > 1, got {growth}")
    started = time.perf_counter()
    limit = 1 << min(spec.model.input_bits, 62)
    trials: list[MeasureResult] = []
    by_n: dict[int, float] = {}

    def information(n: int) -> float:
        if n not in by_n:
            result = measure(spec.model_copy(update={"n": n}), on_epoch)
            trials.append(result)
            by_n[n] = result.mutual_information_bits
            if on_trial is not None:
                on_trial(result)
        return by_n[n]

    # Stage 1: grow until I falls (or the input runs out of distinct rows).
    low, mid = 2, min(max(2, count_parameters(spec.model).total), limit)
    information(mid)
    high = mid
    while len(trials) < max_trials:
        candidate = min(int(mid * growth), limit)
        if candidate == mid:
            break
        if information(candidate) <= by_n[mid]:
            high = candidate
            break
        low, mid = mid, candidate
    else:
        high = mid
    if high == mid:  # I never fell: the peak is at the largest N we could try
        return _result(spec, trials, started)

    # Stage 2: golden-section search on (low, mid, high), with I(mid) the largest so far.
    while len(trials) < max_trials and high - low > max(2, tolerance * mid):
        left, right = mid - low, high - mid
        probe = mid + round(GOLDEN * right) if right >= left else mid - round(GOLDEN * left)
        if probe in (low, mid, high):
            break
        if information(probe) > by_n[mid]:
            low, high = (mid, high) if probe > mid else (low, mid)
            mid = probe
        elif probe > mid:
            high = probe
        else:
            low = probe
    return _result(spec, trials, started)


def _result(spec: MeasureSpec, trials: list[MeasureResult], started: float) -> NSearchResult:
    best = max(trials, key=lambda t: t.mutual_information_bits)
    return NSearchResult(
        params=best.params,
        best=best,
        curve=capacity_curve(trials),
        trials=tuple(trials),
        wall_seconds=time.perf_counter() - started,
    )
