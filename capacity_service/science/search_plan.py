"""The capacity search's supervisor: which trials start, which stop at a rung, what each gave."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from capacity_service.science.engine import TrialConfig
from capacity_service.science.halving import SuccessiveHalving
from capacity_service.science.metrics import mutual_information
from capacity_service.science.schedule import TrainOutcome
from capacity_service.science.search_space import (
    BUCKET,
    CANDIDATES,
    CULL,
    DESIGN_RATES,
    ETA,
    EXPLORE,
    INITIAL,
    PRIOR_FACTORS,
    REFINE,
    REFINE_FACTORS,
    RUNGS,
    STALL_RUNG,
    SURROGATE_TRIALS,
    WIDEN,
    Point,
    decode,
    first_rung,
    point_of,
    prior_n,
    stack_rows,
)
from capacity_service.science.seeds import derive_seed
from capacity_service.specs import CapacitySpec, TrainSpec, TrialRecord
from capacity_service.stopping import StopCheck

StageCallback = Callable[[str], None]


def known_beyond_chance(n: int, accuracy: float) -> float:
    """N(2p - 1): the samples a trial gets right beyond the N/2 that guessing gets, how
    the end of a search compares running trials of different N. I itself is flat near
    p = 1/2, so by I a large-N trial early in its curve looks worthless beside a small-N
    one that learns fast and can never hold as much (LSTM-32: N = 31,028 at 78% is 7.5k
    bits, N = 18,617 at 92% is 11.1k; by this measure 17.4k and 15.8k)."""
    return n * (2.0 * accuracy - 1.0)


class SearchPlan:
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
        self.known: dict[int, float] = {}  # running trial -> samples known beyond chance
        self.at_rung: dict[int, tuple[int, float]] = {}  # running trial -> its last rung
        # and its best accuracy there
        self.last_seen: dict[int, tuple[float, int]] = {}  # running trial -> (time, steps)
        self.row_step_seconds = 0.0  # a step's cost per row in the stack (0: not yet seen)
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
        self._time_step(trial, steps)
        information = mutual_information(point.n, accuracy)
        if point.n <= self.best:  # even 100% of N cannot beat the best: its row is better used
            return False
        self.known[trial] = known_beyond_chance(point.n, accuracy)
        band = math.floor(math.log(point.n) / math.log(BUCKET))  # about the same N
        rung = self.halving.rung(steps)
        if rung > self.halving.rung_reached(trial):  # a rung this trial had not reached
            if self._stalled(trial, rung, accuracy):
                return False
            if not self.halving.keep(trial, band, steps, information):
                return False
        if rung >= 1 and not self._time_admits():
            # no new trial will start: the time left goes to the leaders (a step's cost
            # grows with the rows in the stack), so a trial far behind the best running
            # one stops
            return self.known[trial] >= CULL * max(self.known.values())
        return True

    def _stalled(self, trial: int, rung: int, accuracy: float) -> bool:
        """Whether the trial's best accuracy has not risen since its rung before, from
        the kind's STALL_RUNG on (rung 2 at 108 epochs against rung 1 at 36, for a CNN). A
        network whose units died (CNN 3x3: 5-6 of 16 initializations with He output
        weights, 2 of 16 with the zero output layer it now starts with) holds one accuracy
        to the sample until its schedule ends, 250 epochs later; a live one gains."""
        first = STALL_RUNG.get(self.spec.model.kind)
        before = self.at_rung.get(trial)
        self.at_rung[trial] = (rung, accuracy)
        return first is not None and rung >= first and before is not None and accuracy <= before[1]

    def ended(self, trial: int, outcome: TrainOutcome) -> None:
        index, stage, point = self.running.pop(trial)
        self.known.pop(trial, None)
        self.last_seen.pop(trial, None)
        # a trial stopped as stalled reached its rung without the halving judging it
        stalled_at, _ = self.at_rung.pop(trial, (-1, 0.0))
        rung = max(self.halving.rung_reached(trial), stalled_at)
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
        trial as long as the best finished one (in steps) still fits in the time left, at
        the step cost the stack would have with one more row."""
        now = time.perf_counter()
        if now >= self.deadline:
            return False
        if now - self.started < EXPLORE * self.search.budget_seconds:
            return True
        best = self.best_finished
        if best is None:
            return False
        if not self.row_step_seconds:  # no step timed yet (a resumed search): its own time
            return best.wall_seconds < self.deadline - now
        steps = best.epochs * math.ceil(best.n / best.batch_size)
        needed = steps * self.row_step_seconds * (len(self.running) + 1)
        return needed < self.deadline - now

    def _time_step(self, trial: int, steps: int) -> None:
        """Keep `row_step_seconds` current from a trial's steps between its epoch ends
        (each step of the stack trains every row once). A trial's own wall time says
        less: it ran beside as many rows as the stack held then, and near the end of a
        search the stack holds few (LSTM-32: the best trial took 839 s beside up to 8
        rows; one more beside 1 row would have needed about a third of that, and the
        search ended with 361 s left and no trial running)."""
        now = time.perf_counter()
        seen = self.last_seen.get(trial)
        self.last_seen[trial] = (now, steps)
        if seen is not None and steps > seen[1]:
            self.row_step_seconds = (now - seen[0]) / (steps - seen[1]) / len(self.running)

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
        done = {point_of(r) for r in completed}
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
            batch_size=max(self.spec.batch_sizes),
        )

    def _next(self, count: int) -> tuple[str, list[Point]]:
        if self.design:
            taken, self.design = self.design[:count], self.design[count:]
            return "prior", taken
        widened = self._widen()
        if widened:
            return "widen", widened
        refined = self._refine()
        return ("refine", refined) if refined else ("bayes", self._ask(count))

    def _refine(self) -> list[Point]:
        """After the design, a share of the asks (REFINE, by kind) repeats the best
        finished trial's settings with a new initialization, at its N or a little above
        (REFINE_FACTORS): at the edge of memorization one initialization learns every
        sample where another misses a few, so the best I is a maximum over such repeats."""
        best = self.best_finished
        share = REFINE.get(self.spec.model.kind, 0.0)
        if best is None or share == 0.0 or self.random.rand() >= share:
            return []
        factor = float(self.random.choice(REFINE_FACTORS))
        return [replace(point_of(best), n=min(self.pool_n, round(best.n * factor)))]

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
        return [replace(point_of(best), n=n)]

    def _ask(self, count: int) -> list[Point]:
        """`count` points from scikit-optimize. Its model is refit (told every trial ended
        since) only when the queue of asked points runs dry, and then asked for a batch
        of at least K / 2: a Gaussian-process fit takes about a second at 100 trials on
        this CPU, too slow to do each time a row comes free."""
        if len(self.asked) < count:
            self.asked += self._ask_batch(max(count, stack_rows(self.search) // 2))
        taken, self.asked = self.asked[:count], self.asked[count:]
        points = [decode(x, self.spec.batch_sizes) for x in taken]
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
            Categorical(list(self.spec.batch_sizes)) if len(self.spec.batch_sizes) > 1 else None,
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
        epochs = round(self.spec.trial_epochs * max(1.0, self.prior_n / point.n))
        config = TrialConfig(
            n=point.n,
            train=TrainSpec(
                lr=point.lr,
                momentum=point.momentum,
                lr_decay=point.lr_decay,
                batch_size=point.batch_size,
                epochs=epochs,
                patience=self.spec.trial_patience,
                max_decays=search.max_decays,
            ),
            init_seed=derive_seed(self.spec.seed, f"init-{index}"),
            shuffle_seed=derive_seed(self.spec.seed, f"shuffle-{index}"),
        )
        self.running[self.engine_trials] = (index, stage, point)
        self.engine_trials += 1
        return config
