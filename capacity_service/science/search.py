"""Searching N: find the sample count whose training gives the largest I.

I(N) rises with N while the model memorizes everything (I = N), peaks near capacity and
falls once accuracy collapses. `search_n` grows N geometrically until I drops, then
narrows the bracket around the peak by golden-section steps on the integers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.device import resolve_device
from capacity_service.science.engine import TrialConfig, train_trials
from capacity_service.science.engine.memory import check_fits, default_k
from capacity_service.science.measure import conv_bits, measure
from capacity_service.science.metrics import (
    bits_per_parameter,
    mutual_information,
)
from capacity_service.science.models import count_parameters
from capacity_service.science.seeds import derive_seed
from capacity_service.science.train import ProgressCallback, TrainOutcome
from capacity_service.specs import (
    CapacityResult,
    CapacitySpec,
    CurvePoint,
    MeasureResult,
    MeasureSpec,
    NSearchResult,
    SearchSpec,
    TrainSpec,
    TrialRecord,
    largest_search_n,
    most_distinct_inputs,
)

TrialCallback = Callable[[MeasureResult], None]
GOLDEN = 0.381966  # 2 - golden ratio: the golden-section probe fraction


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


# --- the three-stage capacity search --------------------------------------------------

MEMORIZED = 0.99  # stage 1 looks for the largest N trained to at least this accuracy
LADDER = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # stage 1: N as multiples of the parameter count
COARSE_EPOCHS = 300  # epoch budget of the coarse stages 1 and 2 (they set bounds only)
StageCallback = Callable[[str], None]


@dataclass(frozen=True)
class Point:
    """Where a trial sits in the search space."""

    n: int
    lr: float
    momentum: float
    lr_decay: float
    batch_size: int


class _Runner:
    """Runs trials through the engine, numbers them, and replays finished ones.

    Trial i is fully determined by its index (its seeds) and its point, so a search that
    is given its finished trials again takes their results instead of training them.
    """

    def __init__(
        self,
        spec: CapacitySpec,
        pool: Dataset,
        device: torch.device,
        completed: Sequence[TrialRecord],
        on_trial: Callable[[TrialRecord], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.spec, self.pool, self.device = spec, pool, device
        self.completed = {record.index: record for record in completed}
        self.records: list[TrialRecord] = []
        self.next_index = 0  # trial indices are never reused, even when one was lost
        self.on_trial, self.should_stop = on_trial, should_stop
        self.started = time.perf_counter()
        self.deadline = self.started + spec.search.budget_seconds
        self.engine = "batched"

    def remaining(self) -> int:
        if time.perf_counter() >= self.deadline:
            return 0
        if self.should_stop is not None and self.should_stop():
            return 0
        return self.spec.search.budget_trials - len(self.records)

    def run(
        self, stage: str, points: Sequence[Point], epochs: int | None = None
    ) -> list[TrialRecord]:
        """Train (or replay) these points, at most as many as the budget has left, with
        at most `epochs` epochs each (the search's epoch budget by default)."""
        points = list(points)[: max(0, self.remaining())]
        first = self.next_index
        self.next_index += len(points)
        fresh: list[tuple[int, Point]] = []
        results: dict[int, TrialRecord] = {}
        for offset, point in enumerate(points):
            index = first + offset
            if index in self.completed:
                results[index] = self._replayed(index, stage, point)
            else:
                fresh.append((index, point))
        for chunk_start in range(0, len(fresh), _k(self.spec.search)):
            chunk = fresh[chunk_start : chunk_start + _k(self.spec.search)]
            if chunk_start and self.remaining() <= 0:
                break
            results.update(self._train(stage, chunk, epochs or self.spec.search.epochs))
        finished = [results[i] for i in sorted(results)]
        self.records.extend(finished)
        return finished

    def _replayed(self, index: int, stage: str, point: Point) -> TrialRecord:
        record = self.completed[index]
        if record.stage != stage or _point_of(record) != point:
            raise ValueError(
                f"cannot resume: stored trial {index} ({record.stage}, N = {record.n}) is not "
                f"the one this search plans ({stage}, N = {point.n}); was the spec changed?"
            )
        return record

    def replay_rest(self) -> list[TrialRecord]:
        """Take the finished trials beyond those replayed so far (the Bayesian stage's,
        whose points came from an optimizer state that is gone) as they are."""
        rest = [self.completed[i] for i in sorted(self.completed) if i >= self.next_index]
        self.records.extend(rest)
        if rest:  # a trial lost mid-batch leaves a gap: its index is not used again
            self.next_index = rest[-1].index + 1
        return rest

    def _train(
        self, stage: str, chunk: list[tuple[int, Point]], epochs: int
    ) -> dict[int, TrialRecord]:
        search, seed = self.spec.search, self.spec.seed
        configs = [
            TrialConfig(
                n=point.n,
                train=TrainSpec(
                    lr=point.lr,
                    momentum=point.momentum,
                    lr_decay=point.lr_decay,
                    batch_size=point.batch_size,
                    epochs=min(epochs, search.epochs),
                    patience=search.patience,
                    max_decays=search.max_decays,
                ),
                init_seed=derive_seed(seed, f"init-{index}"),
                shuffle_seed=derive_seed(seed, f"shuffle-{index}"),
            )
            for index, point in chunk
        ]
        records: dict[int, TrialRecord] = {}

        def finished(position: int, outcome: TrainOutcome) -> None:
            index, point = chunk[position]
            information = 0.0 if outcome.diverged else mutual_information(point.n, outcome.accuracy)
            record = TrialRecord(
                index=index,
                stage=stage,
                n=point.n,
                lr=point.lr,
                momentum=point.momentum,
                lr_decay=point.lr_decay,
                batch_size=point.batch_size,
                seed=configs[position].init_seed,
                accuracy=outcome.accuracy,
                mutual_information_bits=information,
                epochs=outcome.epochs,
                wall_seconds=outcome.wall_seconds,
                device=str(self.device),
                diverged=outcome.diverged,
            )
            records[index] = record
            if self.on_trial is not None:  # stored the moment it finishes
                self.on_trial(record)

        run = train_trials(
            self.spec.model, self.pool, configs, self.should_stop, self.deadline, finished
        )
        self.engine = run.engine
        return records


def search_capacity(
    spec: CapacitySpec,
    completed: Sequence[TrialRecord] = (),
    on_trial: Callable[[TrialRecord], None] | None = None,
    on_stage: StageCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CapacityResult:
    """The capacity of `spec.model`: the largest I over N and the training settings.

    Stage 1 brackets N (a geometric ladder from the parameter count, then points between
    the last N memorized and the first not); stage 2 grids the learning rate and batch
    size to set the bounds; stage 3 runs scikit-optimize over learning rate (log), decay,
    momentum, batch size and N together, K points per ask, maximizing I. `completed`
    trials (from an interrupted run) are replayed, not trained again.
    """
    started = time.perf_counter()
    search = spec.search
    device = resolve_device(spec.device)
    counted = count_parameters(spec.model)
    pool_n = largest_search_n(spec)
    if search.batch is None:  # K by device: wider stacks on a GPU
        search = search.model_copy(update={"batch": default_k(device)})
        spec = spec.model_copy(update={"search": search})
    check_fits(spec.model, _k(search), max(search.batch_sizes), pool_n, device)
    pool = make_dataset(spec.model, max(pool_n, 2), derive_seed(spec.seed, "data"), device)
    runner = _Runner(spec, pool, device, completed, on_trial, should_stop)
    stage_budget = max(2, min(15, search.budget_trials // 4))

    if on_stage is not None:
        on_stage("bracket")
    n_star = _bracket(runner, counted.total, pool.n, stage_budget)
    if on_stage is not None:
        on_stage("grid")
    lr_bounds = _grid(runner, min(pool.n, round(1.25 * n_star)), min(12, search.budget_trials // 5))
    if on_stage is not None:
        on_stage("bayes")
    n_bounds = search.n_range or (max(2, round(0.7 * n_star)), min(pool.n, round(2.5 * n_star)))
    _bayes(runner, lr_bounds, n_bounds)

    records = runner.records
    if not records:
        raise RuntimeError("the search ended before any trial finished (budget or cancel)")
    best = max(records, key=lambda r: r.mutual_information_bits)
    return CapacityResult(
        params=counted.total,
        capacity_bits=best.mutual_information_bits,
        bits_per_param=bits_per_parameter(best.mutual_information_bits, counted.total),
        conv_bits_per_param=conv_bits(spec.model, counted, best.mutual_information_bits),
        best=best,
        bracket_n=n_star,
        curve=capacity_curve(records),
        trials=tuple(records),
        engine=runner.engine,
        wall_seconds=time.perf_counter() - started,
        device=str(device),
        seed=spec.seed,
    )


def _k(search: SearchSpec) -> int:
    """K, the trials trained together (set by device before the search starts)."""
    assert search.batch is not None
    return search.batch


def _center(spec: CapacitySpec) -> Point:
    """The middle of the search space."""
    search = spec.search
    return Point(
        n=0,
        lr=math.sqrt(search.lr[0] * search.lr[1]),
        momentum=min(max(0.9, search.momentum[0]), search.momentum[1]),
        lr_decay=sum(search.lr_decay) / 2,
        batch_size=search.batch_sizes[len(search.batch_sizes) // 2],
    )


def _rates(bounds: tuple[float, float], count: int) -> list[float]:
    """`count` learning rates evenly spread on a log scale over the upper part of the
    bounds (memorization at the sizes searched here favours larger rates)."""
    low, high = math.sqrt(bounds[0] * bounds[1]), bounds[1]
    if count == 1:
        return [low]
    return [low * (high / low) ** (i / (count - 1)) for i in range(count)]


def _bracket(runner: _Runner, params: int, pool_n: int, budget: int) -> int:
    """Stage 1: the largest N trained to at least MEMORIZED accuracy.

    Round 1 trains a geometric ladder of N around the parameter count (with two learning
    rates when the budget allows); round 2, at the better rate, bisects between the
    largest N memorized and the next rung, or, when no rung was memorized, descends below
    the ladder. If nothing is memorized at all, the N of the largest I stands in.
    """
    center = _center(runner.spec)
    ladder = sorted({min(pool_n, max(2, round(params * f))) for f in LADDER})
    rates = _rates(runner.spec.search.lr, 2 if budget >= 2 * len(ladder) + 3 else 1)
    first = runner.run(
        "bracket",
        [replace(center, n=n, lr=lr) for n in ladder for lr in rates][:budget],
        epochs=COARSE_EPOCHS,
    )
    if not first:
        return min(pool_n, params)
    best_rate = max(first, key=lambda r: r.mutual_information_bits).lr
    memorized = [r.n for r in first if r.accuracy >= MEMORIZED]
    left = budget - len(first)
    if left > 0:
        if memorized:
            low = max(memorized)
            high = min([r.n for r in first if r.n > low], default=low)
            step = (high - low) / (left + 1)
            probes = {round(low + step * (i + 1)) for i in range(left)} - {low, high}
        else:  # descend: the ladder's bottom rung divided by 1.5, 2, 3, ...
            probes = {max(2, round(ladder[0] / f)) for f in (1.5, 2, 3, 4, 6, 8)[:left]}
        second = runner.run(
            "bracket",
            [replace(center, n=n, lr=best_rate) for n in sorted(probes)],
            epochs=COARSE_EPOCHS,
        )
        first += second
        memorized += [r.n for r in second if r.accuracy >= MEMORIZED]
    if memorized:
        return max(memorized)
    return max(first, key=lambda r: r.mutual_information_bits).n


def _grid(runner: _Runner, n: int, budget: int) -> tuple[float, float]:
    """Stage 2: learning rates x batch sizes at N just past memorization; the learning-rate
    bounds of stage 3 are a factor of 3 around the best."""
    search = runner.spec.search
    low, high = search.lr
    if budget < 2:
        return low, high
    sizes = search.batch_sizes
    rates = _rates(search.lr, max(2, min(4, budget // len(sizes))))
    center = _center(runner.spec)
    points = [replace(center, n=n, lr=lr, batch_size=size) for lr in rates for size in sizes]
    tried = runner.run("grid", points[:budget], epochs=COARSE_EPOCHS)
    if not tried:
        return low, high
    best = max(tried, key=lambda r: r.mutual_information_bits)
    return max(low, best.lr / 3), min(high, best.lr * 3)


def _bayes(runner: _Runner, lr: tuple[float, float], n: tuple[int, int]) -> None:
    """Stage 3: scikit-optimize over (log lr, decay, momentum, batch size, N), maximizing I."""
    from skopt import Optimizer
    from skopt.space import Categorical, Integer, Real

    search = runner.spec.search
    dimensions = [
        Real(lr[0], lr[1], prior="log-uniform"),
        Real(*search.lr_decay),
        Real(*search.momentum),
        Categorical(list(search.batch_sizes)) if len(search.batch_sizes) > 1 else None,
        Integer(*n),
    ]
    space = [d for d in dimensions if d is not None]
    optimizer = Optimizer(
        space,
        base_estimator=search.estimator,
        n_initial_points=min(_k(search), 10),
        random_state=runner.spec.seed,
    )

    def encode(record: TrialRecord) -> list[Any] | None:
        values = [record.lr, record.lr_decay, record.momentum, record.batch_size, record.n]
        values = [v for v, d in zip(values, dimensions, strict=True) if d is not None]
        inside = all(value in dimension for value, dimension in zip(values, space, strict=True))
        return values if inside else None

    # one tell with everything already known: earlier stages and replayed trials
    runner.replay_rest()
    known = [(x, -r.mutual_information_bits) for r in runner.records if (x := encode(r))]
    if known:
        optimizer.tell([x for x, _ in known], [y for _, y in known])
    while (left := runner.remaining()) > 0:
        # a pessimistic lie spreads a batch of asks over the space (cl_min clusters them)
        asked = optimizer.ask(n_points=min(_k(search), left), strategy="cl_max")
        points = [_decode(x, search.batch_sizes) for x in asked]
        finished = runner.run("bayes", points)
        if not finished:
            break
        told = [(x, -r.mutual_information_bits) for r in finished if (x := encode(r))]
        if told:
            optimizer.tell([x for x, _ in told], [y for _, y in told])


def _point_of(record: TrialRecord) -> Point:
    return Point(
        n=record.n,
        lr=record.lr,
        momentum=record.momentum,
        lr_decay=record.lr_decay,
        batch_size=record.batch_size,
    )


def _decode(x: list[Any], batch_sizes: tuple[int, ...]) -> Point:
    """A point asked by scikit-optimize, as plain Python values."""
    values = list(x)
    if len(batch_sizes) == 1:
        values.insert(3, batch_sizes[0])
    lr, lr_decay, momentum, batch_size, n = values
    return Point(
        n=int(n),
        lr=float(lr),
        momentum=float(momentum),
        lr_decay=float(lr_decay),
        batch_size=int(batch_size),
    )
