"""Searching N: find the sample count whose training gives the largest I.

I(N) rises with N while the model memorizes everything (I = N), peaks near capacity and
falls once accuracy collapses. `search_n` grows N geometrically until I drops, then
narrows the bracket around the peak by golden-section steps on the integers.
`search_capacity` searches the training settings too; `search_plan` holds its supervisor,
`search_space` its settings and the points it tries.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.device import resolve_device
from capacity_service.science.engine import TrialConfig, stack_models, train_trials
from capacity_service.science.engine.memory import check_fits, default_k
from capacity_service.science.engine.stacked import Batch
from capacity_service.science.measure import conv_bits, measure
from capacity_service.science.metrics import bits_per_parameter
from capacity_service.science.models import count_parameters
from capacity_service.science.search_plan import SearchPlan, StageCallback
from capacity_service.science.search_space import first_rung, prior_n, stack_rows
from capacity_service.science.seeds import derive_seed
from capacity_service.science.train import ProgressCallback
from capacity_service.specs import (
    CapacityResult,
    CapacitySpec,
    CurvePoint,
    MeasureResult,
    MeasureSpec,
    NSearchResult,
    SearchQuality,
    SearchSpec,
    TrainSpec,
    TrialRecord,
    largest_search_n,
    most_distinct_inputs,
)
from capacity_service.stopping import StopCheck, Stopped

TrialCallback = Callable[[MeasureResult], None]
GOLDEN = 0.381966  # 2 - golden ratio: the golden-section probe fraction
MEMORIZED = 0.99  # the accuracy at which N counts as memorized (the bracket N)


def capacity_curve(trials: Sequence[MeasureResult | TrialRecord]) -> tuple[CurvePoint, ...]:
    """The best accuracy and I per N tried, ordered by N."""
    best: dict[int, MeasureResult | TrialRecord] = {}
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
    limit = most_distinct_inputs(spec.model)
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


# --- the capacity search ---------------------------------------------------------------


def search_capacity(
    spec: CapacitySpec,
    completed: Sequence[TrialRecord] = (),
    on_trial: Callable[[TrialRecord], None] | None = None,
    on_stage: StageCallback | None = None,
    should_stop: StopCheck | None = None,
) -> CapacityResult:
    """The capacity of `spec.model`: the largest I over N and the training settings.

    All trials run in one stack of K rows on the batched engine. The first fill is a
    design around the prior N (`prior_n`: N x 0.6-1.6, at several learning rates); then,
    while the best N lies at the edge of those tried, N is widened by
    1.5; then scikit-optimize (told every ended trial) proposes the rest. At each rung
    successive halving stops the worse trials among those of about the same N, and their
    rows are refilled at once. `completed` trials (of an interrupted run) count as they
    are; none is trained again, and the time they took counts against the budget.
    """
    spent = time_spent(completed)  # by an earlier attempt: the budget is for the job
    started = time.perf_counter() - spent
    device = resolve_device(spec.device)
    if spec.search.batch is None:  # K by device: wider stacks on a GPU
        spec = spec.model_copy(update={"search": spec.search.model_copy(
            update={"batch": default_k(device)})})  # fmt: skip
    search = spec.search
    counted = count_parameters(spec.model)
    pool_n = largest_search_n(spec)
    check_fits(spec.model, stack_rows(search), max(spec.batch_sizes), pool_n, device)
    pool = make_dataset(spec.model, max(pool_n, 2), derive_seed(spec.seed, "data"), device)
    _check_budget(spec, pool, first_rung(spec))
    plan = SearchPlan(spec, pool.n, device, completed, on_trial, on_stage, should_stop, spent)
    run = train_trials(
        spec.model, pool, [], should_stop, plan.deadline, plan.ended, plan, rows=stack_rows(search)
    )
    if should_stop is not None and should_stop():
        raise Stopped(f"stopped after {len(plan.records)} trials")  # each one already handed on
    records = sorted(plan.records, key=lambda r: r.index)
    if not records:
        raise RuntimeError("the time budget ended before any trial finished; raise "
                           "search.budget_seconds")  # fmt: skip
    best = max(records, key=lambda r: r.mutual_information_bits)
    memorized = [r.n for r in records if r.accuracy >= MEMORIZED and r.ended != "rung"]
    wall = time.perf_counter() - started
    return CapacityResult(
        params=counted.total,
        capacity_bits=best.mutual_information_bits,
        bits_per_param=bits_per_parameter(best.mutual_information_bits, counted.total),
        conv_bits_per_param=conv_bits(spec.model, counted, best.mutual_information_bits),
        best=best,
        bracket_n=max(memorized, default=plan.prior_n),
        curve=capacity_curve(records),
        trials=tuple(records),
        engine=run.engine,
        wall_seconds=wall,
        device=str(device),
        seed=spec.seed,
        quality=assess(records, search, wall, plan.prior_n),
    )


def time_spent(completed: Sequence[TrialRecord]) -> float:
    """The seconds a search had run when the last of `completed` ended (0 for records
    from before this was recorded)."""
    return max((r.search_seconds or 0.0 for r in completed), default=0.0)


def _check_budget(spec: CapacitySpec, pool: Dataset, first_rung: int) -> None:
    """Refuse a time budget too small for one full stack to reach the first rung, naming
    the field and the smallest budget that does (timed here, on this device)."""
    search = spec.search
    n, batch = min(pool.n, prior_n(spec)), max(spec.batch_sizes)
    train = TrainSpec(lr=spec.lr_bounds[0], batch_size=batch, epochs=1)
    configs = [
        TrialConfig(n=n, train=train, init_seed=k, shuffle_seed=k)
        for k in range(stack_rows(search))
    ]
    stacked = stack_models(spec.model, configs, pool)
    x = pool.x[:batch].unsqueeze(0).expand(len(configs), *pool.x[:batch].shape).contiguous()
    y = pool.y[:batch].unsqueeze(0).expand(len(configs), -1).contiguous()
    sample = Batch(x, y, torch.full(y.shape, 1.0 / len(y[0]), device=x.device))
    neg_lr, momentum = torch.full((len(configs),), -train.lr), torch.zeros(len(configs))
    stacked.step(sample, neg_lr.to(x.device), momentum.to(x.device))  # warm-up
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    began = time.perf_counter()
    for _ in range(3):
        stacked.step(sample, neg_lr.to(x.device), momentum.to(x.device))
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    needed = (time.perf_counter() - began) / 3 * first_rung
    if search.budget_seconds < needed:
        raise ValueError(
            f"search.budget_seconds: {search.budget_seconds:g} s is too short for a trial to "
            f"reach its first rung ({first_rung:,} steps of K = {len(configs)} trials, about "
            f"{needed:.1f} s here); use at least {math.ceil(needed) + 1} s (--budget-seconds)"
        )


def assess(
    records: Sequence[TrialRecord], search: SearchSpec, wall_seconds: float, prior: int
) -> SearchQuality:
    """How far to trust the best of `records`, with a one-line verdict."""
    best = max(records, key=lambda r: r.mutual_information_bits)
    below = any(r.n < best.n for r in records)
    above = any(
        r.n > best.n
        and r.ended == "schedule"
        and r.mutual_information_bits < best.mutual_information_bits
        for r in records
    )
    bracketed, finished = below and above, best.ended == "schedule"
    used = wall_seconds / search.budget_seconds
    more = f"--budget-seconds {math.ceil(2 * search.budget_seconds)}"
    if len(records) >= search.budget_trials and used < 0.9:
        more = f"--budget-trials {2 * search.budget_trials}"
    if bracketed and finished:
        verdict = "tight lower bound: the maximum of I is bracketed and its trial finished"
    elif not bracketed:
        side = "below" if not below else "above"
        verdict = (f"lower bound: no finished trial {side} the best N has a lower I, so the "
                   f"maximum may lie further {side}; rerun with {more}")  # fmt: skip
    else:
        verdict = (f"lower bound: the best trial was stopped ({best.ended}) before its own "
                   f"end; rerun with {more}")  # fmt: skip
    return SearchQuality(
        bracketed=bracketed,
        best_finished=finished,
        trials=len(records),
        budget_used=round(used, 4),
        prior_n=prior,
        verdict=verdict,
    )
