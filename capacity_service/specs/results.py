"""What a measurement, a sweep and a capacity search return, and where it was computed."""

from __future__ import annotations

from typing import Literal

from capacity_service.specs.base import Frozen
from capacity_service.specs.training import TrainSpec


class ParameterGroup(Frozen):
    """One weight or bias tensor, counted as effective parameters."""

    name: str
    shape: tuple[int, ...]
    count: int
    layer: Literal["dense", "conv", "recurrent", "output"]
    quantizable: bool


class ParameterCount(Frozen):
    total: int
    groups: tuple[ParameterGroup, ...]

    @property
    def quantizable(self) -> int:
        return sum(g.count for g in self.groups if g.quantizable)

    def count_layers(self, *layers: str) -> int:
        return sum(g.count for g in self.groups if g.layer in layers)


class MeasureResult(Frozen):
    """What one training measured: accuracy p over all N samples and I = N (1 - H2(p))."""

    params: int
    n: int
    accuracy: float
    mutual_information_bits: float
    bits_per_param: float
    epochs: int
    wall_seconds: float
    device: str
    seed: int
    diverged: bool
    train: TrainSpec
    conv_bits_per_param: float | None = None


class CurvePoint(Frozen):
    """The best accuracy and I found at one N."""

    n: int
    accuracy: float
    mutual_information_bits: float


class NSearchResult(Frozen):
    """`measure --search-n`: the N with the largest I at fixed hyperparameters."""

    params: int
    best: MeasureResult
    curve: tuple[CurvePoint, ...]
    trials: tuple[MeasureResult, ...]
    wall_seconds: float


class SweepPoint(Frozen):
    """One precision of a sweep: accuracy directly after quantization and after retraining."""

    bits: int
    accuracy_quantized: float
    accuracy_retrained: float
    mutual_information_quantized_bits: float
    mutual_information_bits: float  # after retraining
    retrain_epochs: int
    retrain_diverged: bool
    steps: dict[str, float]  # the step D of each quantized group
    levels_used: dict[str, int]  # distinct codes each group uses after retraining
    code_changes: int | None = None  # codes the code search changed; None: it did not run
    search_rounds_kept: int | None = None  # search rounds that held more; None: none ran


class SweepCurve(Frozen):
    """The sweep at one N."""

    n: int
    float_accuracy: float
    float_mutual_information_bits: float
    float_epochs: int
    float_diverged: bool
    points: tuple[SweepPoint, ...]
    precision_boundary: int | None  # smallest precision within tolerance, None if none
    wall_seconds: float


class Provenance(Frozen):
    """Where a result was computed, so that a change after an upgrade of torch or a move
    to another machine can be told apart from one in the code (capacity_service.provenance
    fills it)."""

    package_version: str  # capacity_service.__version__
    git_commit: str | None  # None: not run from a git checkout (or no git)
    torch: str | None  # installed versions; None: not installed
    numpy: str | None
    scikit_optimize: str | None
    device_name: str  # the CPU model or the GPU's name
    threads: int  # torch's intra-op threads (the CPU count where torch is not loaded)


class SweepResult(Frozen):
    params: int
    quantized_params: int
    regime: str  # "n", "list", "full" or "half"
    tolerance: float
    device: str
    seed: int
    curves: tuple[SweepCurve, ...]
    wall_seconds: float
    provenance: Provenance | None = None  # None in results stored before it existed


# What ended a trial: its own schedule (100%, plateau, epoch budget, divergence), a rung of
# the successive-halving search (a worse trial stopped early), or the search's deadline.
Ending = Literal["schedule", "rung", "deadline"]


class TrialRecord(Frozen):
    """One finished training of the capacity search: what was tried and what it gave."""

    index: int
    # "prior", "widen", "refine", "bayes" (older searches: "bracket", "grid", "bayes")
    stage: Literal["prior", "widen", "refine", "bayes", "bracket", "grid"]
    n: int
    lr: float
    momentum: float
    lr_decay: float
    batch_size: int
    seed: int  # the trial's initialization seed
    accuracy: float
    mutual_information_bits: float
    epochs: int
    wall_seconds: float
    device: str
    diverged: bool
    ended: Ending = "schedule"
    rung: int | None = None  # the highest successive-halving rung it reached (0 = first)
    # seconds into its search when it ended, counting the attempts before a resume (a
    # resumed search's time budget starts from the latest of these)
    search_seconds: float | None = None


class SearchQuality(Frozen):
    """How far to trust a capacity: it is a lower bound, tight only when the maximum of I
    was bracketed and the best trial ended by its own rule."""

    bracketed: bool  # a trial at a smaller N and a finished one at a larger N have lower I
    best_finished: bool  # the best trial ended by its own schedule (not a rung or deadline)
    trials: int
    budget_used: float  # fraction of budget_seconds spent
    prior_n: int  # where the search looked first: parameters x the kind's bits/param
    verdict: str  # one line for a reader


class CapacityResult(Frozen):
    params: int
    capacity_bits: float
    bits_per_param: float
    conv_bits_per_param: float | None
    best: TrialRecord
    bracket_n: int  # the largest N memorized (accuracy >= 0.99); the prior N if none was
    curve: tuple[CurvePoint, ...]
    trials: tuple[TrialRecord, ...]
    engine: str  # "batched" (older results may say "sequential": CNN and RNN trials were not)
    wall_seconds: float
    device: str
    seed: int
    quality: SearchQuality | None = None  # None in results stored before it existed
    provenance: Provenance | None = None  # likewise
