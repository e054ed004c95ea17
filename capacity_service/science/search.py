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

import numpy as np
import torch

from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.device import resolve_device
from capacity_service.science.engine import TrialConfig, stack_models, train_trials
from capacity_service.science.engine.memory import check_fits, default_k
from capacity_service.science.engine.stacked import Batch
from capacity_service.science.halving import SuccessiveHalving
from capacity_service.science.measure import conv_bits, measure
from capacity_service.science.metrics import (
    DEFAULT_FC_BITS_PER_PARAM,
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

# Where the capacity of a kind usually lies, in bits per parameter (thesis 2.4; for a CNN,
# of its convolution layers, its dense layers counted at DEFAULT_FC_BITS_PER_PARAM): the
# search looks first around N = parameters x these.
PRIOR_BITS = {"fcdnn": 2.3, "cnn": 3.0, "lstm": 3.7, "gru": 3.7, "rnn": 3.7}
PRIOR_FACTORS = (1.0, 0.8, 1.25, 0.6, 1.6)  # the design's N, as multiples of the prior N
DESIGN_RATES = 5  # learning rates at each N of the design, log-spaced over the range
WIDEN = 1.5  # a best N at the edge of those tried: try N x 1.5 (or / 1.5) next
RUNG_EPOCHS = 4  # the first rung: 4 epochs at the prior N and the largest batch, in steps
ETA = 3  # successive halving: the best third of a rung goes on
RUNGS = 4  # rungs at 4, 12, 36 and 108 such epochs; past the last a trial runs to its end
BUCKET = 1.5  # trials compete at a rung with those whose N lies in the same 1.5x band
EXPLORE = 0.3  # new trials start in the first 30% of the time budget (see _time_admits)
CANDIDATES = 2000  # random points scored by expected improvement per batch of asks
SURROGATE_TRIALS = 120  # trials the model is fit on (the best half, then the latest)
INITIAL = 10  # trials known before the model is fit (random points until then)
CULL = 0.7  # once no trial starts any more, one past the first rung whose I is below 70%
# of the best running trial's stops
MEMORIZED = 0.99
StageCallback = Callable[[str], None]


@dataclass(frozen=True)
class Point:
    """Where a trial sits in the search space."""

    n: int
    lr: float
    momentum: float
    lr_decay: float
    batch_size: int


def prior_n(spec: CapacitySpec) -> int:
    """N at the kind's usual bits per parameter (capped by the data pool)."""
    counted = count_parameters(spec.model)
    bits = PRIOR_BITS[spec.model.kind]
    if spec.model.kind == "cnn":
        conv = counted.count_layers("conv")
        estimate = bits * conv + DEFAULT_FC_BITS_PER_PARAM * (counted.total - conv)
    else:
        estimate = bits * counted.total
    return max(2, min(largest_search_n(spec), round(estimate)))


def first_rung(spec: CapacitySpec) -> int:
    """Optimizer steps to the first rung: RUNG_EPOCHS epochs at the prior N and the
    largest batch size (steps, not epochs, so a small N is not starved)."""
    return RUNG_EPOCHS * math.ceil(prior_n(spec) / max(spec.search.batch_sizes))


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
    check_fits(spec.model, _k(search), max(search.batch_sizes), pool_n, device)
    pool = make_dataset(spec.model, max(pool_n, 2), derive_seed(spec.seed, "data"), device)
    _check_budget(spec, pool, first_rung(spec))
    plan = _Search(spec, pool.n, device, completed, on_trial, on_stage, should_stop, spent)
    run = train_trials(
        spec.model, pool, [], should_stop, plan.deadline, plan.ended, plan, rows=_k(search)
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
    n = min(pool.n, prior_n(spec))
    train = TrainSpec(lr=spec.lr_bounds[0], batch_size=max(search.batch_sizes), epochs=1)
    configs = [
        TrialConfig(n=n, train=train, init_seed=k, shuffle_seed=k) for k in range(_k(search))
    ]
    stacked = stack_models(spec.model, configs, pool)
    batch = max(search.batch_sizes)
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


class _Search:
    """The engine's supervisor: which trials start in free rows, which stop at a rung,
    and the record of each trial the moment it ends."""

    def __init__(
        self,
        spec: CapacitySpec,
        pool_n: int,
        device: torch.device,
        completed: Sequence[TrialRecord],
        on_trial: Callable[[TrialRecord], None] | None,
        on_stage: StageCallback | None,
        should_stop: StopCheck | None,
        spent: float,
    ) -> None:
        self.spec, self.search, self.pool_n, self.device = spec, spec.search, pool_n, device
        self.on_trial, self.on_stage, self.should_stop = on_trial, on_stage, should_stop
        # an interrupted search resumes where its clock stood, `spent` seconds in
        self.started = time.perf_counter() - spent
        self.deadline = self.started + self.search.budget_seconds
        self.prior_n = prior_n(spec)
        self.records: list[TrialRecord] = list(completed)
        self.best_finished: TrialRecord | None = None  # the best its own schedule ended
        self.best, self.best_n = 0.0, 0  # the largest I so far, and its N (0: none)
        for record in completed:
            self._count(record)
        self.next_index = max((r.index for r in completed), default=-1) + 1
        self.stage = ""
        self.running: dict[int, tuple[int, str, Point]] = {}  # engine trial -> index, stage, point
        self.engine_trials = 0
        self.halving = SuccessiveHalving(first_rung(spec), ETA, RUNGS)
        self.design = self._design(completed)
        self.widened: set[int] = set()
        self.space: Any = None  # scikit-optimize's, made at the first ask
        self.random = np.random.RandomState(spec.seed)
        self.latest: dict[int, float] = {}  # running trial -> its I at its last epoch end
        self.asked: list[list[Any]] = []  # points asked of scikit-optimize, not yet tried

    # --- the engine's questions -------------------------------------------------------

    def admit(self, free_rows: int) -> list[TrialConfig]:
        fresh: list[TrialConfig] = []
        while len(fresh) < free_rows and self._may_start():
            left = self.search.budget_trials - len(self.records) - len(self.running)
            stage, points = self._next(min(free_rows - len(fresh), left))
            if not points:
                break
            if stage != self.stage:
                self.stage = stage
                if self.on_stage is not None:
                    self.on_stage(stage)
            for point in points:
                fresh.append(self._start(stage, point))
        return fresh

    def keep(self, trial: int, steps: int, accuracy: float) -> bool:
        _, _, point = self.running[trial]
        information = mutual_information(point.n, accuracy)
        if point.n <= self.best:  # even 100% of N cannot beat the best: its row is better used
            return False
        self.latest[trial] = information
        band = math.floor(math.log(point.n) / math.log(BUCKET))  # about the same N
        if not self.halving.keep(trial, band, steps, information):
            return False
        if self.halving.rung(steps) >= 1 and not self._time_admits():
            # no new trial will start: the time left goes to the leaders (a step's cost
            # grows with the rows in the stack), so a trial far behind the best running
            # one stops
            return information >= CULL * max(self.latest.values())
        return True

    def ended(self, trial: int, outcome: TrainOutcome) -> None:
        index, stage, point = self.running.pop(trial)
        self.latest.pop(trial, None)
        rung = self.halving.rung_reached(trial)
        record = TrialRecord(
            index=index,
            stage=stage,
            n=point.n,
            lr=point.lr,
            momentum=point.momentum,
            lr_decay=point.lr_decay,
            batch_size=point.batch_size,
            seed=derive_seed(self.spec.seed, f"init-{index}"),  # as `_start` seeded it
            accuracy=outcome.accuracy,
            mutual_information_bits=(
                0.0 if outcome.diverged else mutual_information(point.n, outcome.accuracy)
            ),
            epochs=outcome.epochs,
            wall_seconds=outcome.wall_seconds,
            device=str(self.device),
            diverged=outcome.diverged,
            ended=outcome.ended,
            rung=rung if rung >= 0 else None,
            search_seconds=round(time.perf_counter() - self.started, 3),
        )
        self.records.append(record)
        self._count(record)
        if self.on_trial is not None:  # stored the moment it ends
            self.on_trial(record)

    def _count(self, record: TrialRecord) -> None:
        """Keep the best I so far (and its N), and the best trial its schedule ended."""
        if record.mutual_information_bits > self.best:
            self.best, self.best_n = record.mutual_information_bits, record.n
        best = self.best_finished
        if record.ended == "schedule" and (
            best is None or record.mutual_information_bits > best.mutual_information_bits
        ):
            self.best_finished = record

    # --- the plan ---------------------------------------------------------------------

    def _may_start(self) -> bool:
        if len(self.records) + len(self.running) >= self.search.budget_trials:
            return False
        if self.should_stop is not None and self.should_stop():
            return False
        return self._time_admits()

    def _time_admits(self) -> bool:
        """New trials start in the first EXPLORE of the time budget; later, only while a
        trial as long as the best finished one still fits in the time left."""
        now = time.perf_counter()
        if now >= self.deadline:
            return False
        if now - self.started < EXPLORE * self.search.budget_seconds:
            return True
        best = self.best_finished
        return best is not None and best.wall_seconds < self.deadline - now

    def _design(self, completed: Sequence[TrialRecord]) -> list[Point]:
        """The first fill: the prior N x 0.6-1.6, each at DESIGN_RATES learning rates (at
        the largest batch size), nearest the prior first; at most half the trial budget
        (the rest is for widening and the Bayesian stage); points of `completed` trials
        are not tried again."""
        low, high = self.spec.lr_bounds
        rates = [low * (high / low) ** (i / (DESIGN_RATES - 1)) for i in range(DESIGN_RATES)]
        rates.sort(key=lambda rate: abs(math.log(rate / math.sqrt(low * high))))  # middle first
        center = self._center()
        points = [
            replace(center, n=max(2, min(self.pool_n, round(self.prior_n * f))), lr=lr)
            for f in PRIOR_FACTORS for lr in rates
        ]  # fmt: skip
        done = {_point_of(r) for r in completed}
        design = list(dict.fromkeys(points))[: max(1, self.search.budget_trials // 2)]
        return [point for point in design if point not in done]

    def _center(self) -> Point:
        search = self.search
        low, high = self.spec.lr_bounds
        return Point(
            n=self.prior_n,
            lr=math.sqrt(low * high),
            momentum=min(max(0.9, search.momentum[0]), search.momentum[1]),
            lr_decay=sum(search.lr_decay) / 2,
            batch_size=max(search.batch_sizes),
        )

    def _next(self, count: int) -> tuple[str, list[Point]]:
        if self.design:
            taken, self.design = self.design[:count], self.design[count:]
            return "prior", taken
        widened = self._widen()
        if widened:
            return "widen", widened
        return "bayes", self._ask(count)

    def _widen(self) -> list[Point]:
        """While the best N is the smallest or the largest N tried (or running), the next
        N beyond it, at the best trial's settings."""
        if not self.records:
            return []
        best = max(self.records, key=lambda r: r.mutual_information_bits)
        tried = {r.n for r in self.records} | {p.n for _, _, p in self.running.values()}
        if best.n >= max(tried):
            n = min(self.pool_n, round(best.n * WIDEN))
        elif best.n <= min(tried):
            n = max(2, round(best.n / WIDEN))
        else:
            return []
        if n in tried or n in self.widened:
            return []
        self.widened.add(n)
        return [replace(_point_of(best), n=n)]

    def _ask(self, count: int) -> list[Point]:
        """`count` points from scikit-optimize. Its model is refit (told every trial ended
        since) only when the queue of asked points runs dry, and then asked for a batch
        of at least K / 2: a Gaussian-process fit takes about a second at 100 trials on
        this CPU, too slow to do each time a row comes free."""
        if len(self.asked) < count:
            self.asked += self._ask_batch(max(count, _k(self.search) // 2))
        taken, self.asked = self.asked[:count], self.asked[count:]
        points = [_decode(x, self.search.batch_sizes) for x in taken]
        # an N below the best I found cannot beat it even at 100% (the best may have
        # risen since these were asked): ask just above instead
        floor = math.ceil(1.05 * self.best)
        return [replace(p, n=min(self.pool_n, max(p.n, floor))) for p in points]

    def _ask_batch(self, count: int) -> list[list[Any]]:
        """`count` points from one fit of scikit-optimize's model on the trials known so
        far (at most SURROGATE_TRIALS of them: the best half and the latest), each the
        point of largest expected improvement in its share of CANDIDATES random points:
        a spread batch for one fit, where skopt's constant-liar batch refits once per
        point (measured about 1 s a fit at 100 trials on this CPU, 7 s for 8 points).
        Before INITIAL trials are known, random points of the space."""
        from skopt import Optimizer
        from skopt.acquisition import gaussian_ei
        from skopt.utils import cook_estimator

        space = self._space()
        # a trial stopped before the first rung (its N could not beat the best) says little
        known = [r for r in self.records if r.ended != "rung" or r.rung is not None]
        encoded = [(x, -r.mutual_information_bits) for r in known if (x := self._encode(r))]
        if len(encoded) < INITIAL:
            return list(space.rvs(n_samples=count, random_state=self.random))
        ranked = sorted(encoded, key=lambda pair: pair[1])[: SURROGATE_TRIALS // 2]
        latest = [pair for pair in encoded[-SURROGATE_TRIALS:] if pair not in ranked]
        chosen = ranked + latest[-(SURROGATE_TRIALS - len(ranked)) :]
        estimator = cook_estimator(
            self.search.estimator, space=space, random_state=self.spec.seed,
            # one kernel fit, no restarts: 0.1 s instead of 1 s at 100 trials
            **({"n_restarts_optimizer": 0} if self.search.estimator == "GP" else {}),
        )  # fmt: skip
        optimizer = Optimizer(
            space.dimensions,
            base_estimator=estimator,
            n_initial_points=1,
            acq_optimizer="sampling",  # the batch is chosen below, not by skopt's search
            acq_optimizer_kwargs={"n_points": 1},
            random_state=self.spec.seed,
        )
        optimizer.tell([x for x, _ in chosen], [y for _, y in chosen])
        candidates = space.rvs(n_samples=CANDIDATES, random_state=self.random)
        improvement = gaussian_ei(
            space.transform(candidates), optimizer.models[-1], y_opt=min(optimizer.yi)
        )
        group = max(1, CANDIDATES // count)
        return [
            candidates[start + int(np.argmax(improvement[start : start + group]))]
            for start in range(0, group * count, group)
        ]

    def _space(self) -> Any:
        """The Bayesian stage's space: log lr, decay, momentum, batch size (if several)
        and N: `n_range`, or 0.8-1.5 x the best N so far (0.4-2.5 x the prior N before
        any), where I peaks; beyond, widening finds the edge."""
        from skopt.space import Categorical, Integer, Real, Space

        search = self.search
        if search.n_range is not None:
            n_low, n_high = search.n_range
        elif self.best_n:
            n_low, n_high = round(0.8 * self.best_n), round(1.5 * self.best_n)
        else:
            n_low, n_high = round(0.4 * self.prior_n), round(2.5 * self.prior_n)
        n_low = max(2, n_low, math.ceil(1.05 * self.best))  # below, N cannot beat the best
        n_high = max(n_low + 1, min(self.pool_n, n_high))
        self.dimensions = [
            Real(*self.spec.lr_bounds, prior="log-uniform"),
            Real(*search.lr_decay),
            Real(*search.momentum),
            Categorical(list(search.batch_sizes)) if len(search.batch_sizes) > 1 else None,
            Integer(n_low, n_high),
        ]
        self.space = Space([d for d in self.dimensions if d is not None])
        return self.space

    def _encode(self, record: TrialRecord) -> list[Any] | None:
        values = [record.lr, record.lr_decay, record.momentum, record.batch_size, record.n]
        values = [v for v, d in zip(values, self.dimensions, strict=True) if d is not None]
        inside = all(
            value in dimension
            for value, dimension in zip(values, self.space.dimensions, strict=True)
        )
        return values if inside else None

    def _start(self, stage: str, point: Point) -> TrialConfig:
        """The engine's config of a new trial, numbered by the search (never reused)."""
        index, self.next_index = self.next_index, self.next_index + 1
        search = self.search
        # a small N is given proportionally more epochs, so its budget in steps is not cut
        epochs = round(search.epochs * max(1.0, self.prior_n / point.n))
        config = TrialConfig(
            n=point.n,
            train=TrainSpec(
                lr=point.lr,
                momentum=point.momentum,
                lr_decay=point.lr_decay,
                batch_size=point.batch_size,
                epochs=epochs,
                patience=search.patience,
                max_decays=search.max_decays,
            ),
            init_seed=derive_seed(self.spec.seed, f"init-{index}"),
            shuffle_seed=derive_seed(self.spec.seed, f"shuffle-{index}"),
        )
        self.running[self.engine_trials] = (index, stage, point)
        self.engine_trials += 1
        return config


def _k(search: SearchSpec) -> int:
    """K, the trials trained together (set by device before the search starts)."""
    assert search.batch is not None
    return search.batch


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
