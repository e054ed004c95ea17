"""Asynchronous successive halving: stop the worse trials early, at rungs.

The rule of ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning",
MLSys 2020) in the stopping form that Optuna's `SuccessiveHalvingPruner` and Ray Tune's
`AsyncHyperBandScheduler` use: rung r sits at `first_rung * eta**r` optimizer steps; a
trial that reaches a rung goes on only if its value is among the best 1/eta of all values
recorded at that rung so far (the first trials there go on only if they lead it). Trials
compete within a group (`bucket`): here, trials of about the same N, whose mutual
information can be compared at equal fidelity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable


class SuccessiveHalving:
    def __init__(self, first_rung: int, eta: int = 3, rungs: int = 3) -> None:
        if first_rung < 1 or eta < 2 or rungs < 1:
            raise ValueError(f"need first_rung >= 1, eta >= 2, rungs >= 1; got "
                             f"{first_rung}, {eta}, {rungs}")  # fmt: skip
        self.milestones = [first_rung * eta**r for r in range(rungs)]
        self.eta = eta
        self.values: dict[tuple[Hashable, int], list[float]] = defaultdict(list)
        self.reached: dict[Hashable, int] = {}  # trial -> highest rung judged

    def rung(self, steps: int) -> int:
        """The highest rung `steps` has reached (-1: none yet)."""
        return sum(1 for m in self.milestones if steps >= m) - 1

    def keep(self, trial: Hashable, bucket: Hashable, steps: int, value: float) -> bool:
        """Whether the trial goes on; judged once per rung (a trial that passes several
        rungs in one epoch is judged at the highest)."""
        rung = self.rung(steps)
        if rung < 0 or rung <= self.reached.get(trial, -1):
            return True
        self.reached[trial] = rung
        values = self.values[(bucket, rung)]
        values.append(value)
        promoted = max(1, len(values) // self.eta)
        return value >= sorted(values, reverse=True)[promoted - 1]

    def rung_reached(self, trial: Hashable) -> int:
        return self.reached.get(trial, -1)
