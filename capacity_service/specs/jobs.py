"""What a job asks for: a measurement, a quantization sweep or a capacity search."""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from capacity_service.specs.base import Device, Frozen, Int, Real
from capacity_service.specs.models import ModelSpec, check_n_fits, check_sample_count
from capacity_service.specs.training import RetrainSpec, TrainSpec


class MeasureSpec(Frozen):
    """One training of one model on N random samples: the unit of every measurement."""

    model: ModelSpec
    n: Int = Field(2000, ge=2, description="number of random samples N")
    train: TrainSpec = TrainSpec()
    seed: Int = Field(0, ge=0, description="seeds the data and the initialization")
    device: Device = Field("auto", description="auto, cpu, cuda or cuda:i")

    @field_validator("n")
    @classmethod
    def _n_fits_distinct_rows(cls, n: int, info: ValidationInfo) -> int:
        model = info.data.get("model")  # absent when the model itself was invalid
        if model is not None:
            check_n_fits(model, n)
        return n


DEFAULT_PRECISIONS = (8, 6, 5, 4, 3, 2)
MAX_BITS = 16


class SweepSpec(Frozen):
    """Train in floating point, then quantize to falling precisions and retrain at each.

    N is given directly (`n`: one N or a list), or relative to a capacity result
    (`regime` "full" = the N that gave the capacity, "half" = N / 2, with `capacity_n`).
    """

    model: ModelSpec
    n: Int | list[Int] | None = Field(None, description="N, or a list of N")
    regime: Literal["full", "half"] | None = Field(None, description="N relative to capacity")
    capacity_n: Int | None = Field(None, ge=2, description="the N that gave the capacity")
    capacity_job: Int | None = Field(
        None, ge=1, description="a finished capacity job to take capacity_n from (job store)"
    )
    bits: tuple[Int, ...] = Field(DEFAULT_PRECISIONS, description="precisions, falling")
    train: TrainSpec = TrainSpec()
    retrain: RetrainSpec = RetrainSpec()
    tolerance: Real = Field(
        0.005, ge=0, le=1, description="accuracy drop (fraction) the boundary tolerates"
    )
    seed: Int = Field(0, ge=0)
    device: Device = Field("auto", description="auto, cpu, cuda or cuda:i")

    @field_validator("bits")
    @classmethod
    def _falling_precisions(cls, bits: tuple[int, ...]) -> tuple[int, ...]:
        if not bits:
            raise ValueError("give at least one precision, e.g. [8, 6, 5, 4, 3, 2]")
        for value in bits:
            if not 1 <= value <= MAX_BITS:
                raise ValueError(f"each precision must be in 1..{MAX_BITS}, got {value}")
        if any(a <= b for a, b in pairwise(bits)):
            raise ValueError(f"precisions must fall strictly, e.g. [8, 6, 4], got {list(bits)}")
        return bits

    @model_validator(mode="after")
    def _one_way_to_choose_n(self) -> SweepSpec:
        if (self.n is None) == (self.regime is None):
            raise ValueError(
                "n, regime: give either n (one N or a list) or regime ('full' or 'half') "
                "with capacity_n"
            )
        if self.regime is not None and self.capacity_n is None and self.capacity_job is None:
            raise ValueError(
                f"capacity_n: regime {self.regime!r} needs the N that gave the capacity "
                "(from a capacity result, or capacity_job naming a finished capacity job)"
            )
        if self.regime is None or self.capacity_n is not None:
            for n in self.sample_counts():
                check_sample_count(self.model, n, "n")
        return self

    def sample_counts(self) -> list[int]:
        """The N of each curve of the sweep."""
        if self.regime is not None:
            if self.capacity_n is None:
                raise ValueError(f"capacity_n of capacity job {self.capacity_job} not resolved")
            return [self.capacity_n if self.regime == "full" else self.capacity_n // 2]
        if isinstance(self.n, list):
            if not self.n:
                raise ValueError("n: give at least one N")
            return list(self.n)
        assert self.n is not None
        return [self.n]


# The learning-rate range a search covers when the spec names none: the useful rate
# differs by kind (FCDNN 64x2 memorizes best near 0.006, LSTM-32 at 0.05-0.2).
DEFAULT_LR: dict[str, tuple[float, float]] = {
    "fcdnn": (0.002, 0.2),
    "cnn": (0.01, 0.1),  # CNN 3x3: 0.002-0.005 held rows 800-1,050 epochs for 86-90%
    "lstm": (0.04, 1.2),  # at its larger batches (DEFAULT_BATCH_SIZES): 0.01-0.3 at 64-128
    "gru": (0.01, 0.3),
    "rnn": (0.005, 0.2),
}

# The minibatch sizes a search tries when the spec names none. A step of a small recurrent
# network costs about the same at batch 128 as at 512 on this CPU (kernel launches bound
# it), and an LSTM-32 learns about as much per epoch at batch 512 and lr 0.4 as at 128 and
# 0.1: at N = 31,028, two trials for 150 s reached 84-85% at batch 128 (lr 0.1, 0.2) and
# 87-92% at batch 512 (lr 0.2, 0.4); 85% at 256 (measured for LSTM only).
DEFAULT_BATCH_SIZES: dict[str, tuple[int, ...]] = {
    "fcdnn": (64, 128),
    "cnn": (64, 128),
    "lstm": (256, 512),
    "gru": (64, 128),
    "rnn": (64, 128),
}

# Each trial's plateau patience when the spec names none. A memorizing FCDNN's accuracy
# creeps up for many epochs after a plateau: FCDNN 32x1 in a 60 s search, 3 seeds, one
# session reached 1.90 / 2.03 / 2.17 / 2.14 bits/param at patience 25 / 50 / 100 / 200
# (measured for FCDNN only; the other kinds keep 50).
DEFAULT_PATIENCE: dict[str, int] = {"fcdnn": 100, "cnn": 50, "lstm": 50, "gru": 50, "rnn": 50}

# Each trial's epoch budget when the spec names none. FCDNN 32x1's best trials in a 60 s
# search (N = 2,581, lr 0.063) ended at 1,500 epochs still climbing (98.8-99.9%); at 3,000,
# 3 seeds gave 2.262 / 2.254 / 2.162 bits/param against 2.262 / 2.237 / 2.094 at 1,500 in
# one session (2.197 against 2.173 in another). Measured for FCDNN only: CNN 3x3 trials end
# by their schedule before 1,500, and LSTM-32's best reach 1,500 (99.7%) just before a
# 20-minute search's deadline, so more would not fit.
DEFAULT_EPOCHS: dict[str, int] = {
    "fcdnn": 3000, "cnn": 1500, "lstm": 1500, "gru": 1500, "rnn": 1500,
}  # fmt: skip


class SearchSpec(Frozen):
    """Budget and bounds of the three-stage capacity search (thesis 2.3.1)."""

    budget_trials: Int = Field(60, ge=1, description="trainings at most, all stages")
    budget_seconds: Real = Field(600, gt=0, description="wall seconds at most")
    batch: Int | None = Field(
        None, ge=1, description="K: trials trained together (default 8 on a CPU, 256 on a GPU)"
    )
    epochs: Int | None = Field(
        None, ge=1, description="epoch budget of each trial (default by kind: DEFAULT_EPOCHS)"
    )
    patience: Int | None = Field(
        None,
        ge=1,
        description="epochs without a better accuracy = plateau (default by "
        "kind: DEFAULT_PATIENCE)",
    )
    max_decays: Int = Field(4, ge=0, description="plateaus tolerated before a trial stops")
    lr: tuple[Real, Real] | None = Field(
        None, description="learning rate, log scale (default by kind: DEFAULT_LR)"
    )
    lr_decay: tuple[Real, Real] = Field((0.1, 0.5), description="decay factor")
    momentum: tuple[Real, Real] = Field((0.6, 0.99), description="SGD momentum")
    batch_sizes: tuple[Int, ...] | None = Field(
        None, description="minibatch sizes (default by kind: DEFAULT_BATCH_SIZES)"
    )
    n_range: tuple[Int, Int] | None = Field(None, description="N bounds; default from stage 1")
    estimator: Literal["GP", "RF", "ET"] = Field("GP", description="scikit-optimize model")

    @field_validator("lr", "lr_decay", "momentum", "n_range")
    @classmethod
    def _ordered_bounds(cls, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"low must be < high, got {list(bounds)}")
        return bounds

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        if bounds is not None and bounds[0] <= 0:
            raise ValueError(f"learning rates must be > 0, got {list(bounds)}")
        return bounds

    @field_validator("lr_decay", "momentum")
    @classmethod
    def _unit_interval(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[0] < 0 or bounds[1] >= 1:
            raise ValueError(f"must lie in [0, 1), got {list(bounds)}")
        return bounds

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes(cls, sizes: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if sizes is None:
            return None
        if not sizes or min(sizes) < 1:
            raise ValueError("give at least one batch size, each >= 1")
        return tuple(sorted(set(sizes)))


class CapacitySpec(Frozen):
    """A capacity measurement: search N and the hyperparameters for the largest I."""

    model: ModelSpec
    search: SearchSpec = SearchSpec()
    seed: Int = Field(0, ge=0)
    device: Device = Field("auto", description="auto, cpu, cuda or cuda:i")

    @property
    def lr_bounds(self) -> tuple[float, float]:
        """The learning-rate range searched: the spec's, or the kind's default."""
        return self.search.lr or DEFAULT_LR[self.model.kind]

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The minibatch sizes searched: the spec's, or the kind's default."""
        return self.search.batch_sizes or DEFAULT_BATCH_SIZES[self.model.kind]

    @property
    def trial_epochs(self) -> int:
        """Each trial's epoch budget: the spec's, or the kind's default."""
        return self.search.epochs or DEFAULT_EPOCHS[self.model.kind]

    @property
    def trial_patience(self) -> int:
        """Each trial's plateau patience: the spec's, or the kind's default."""
        return self.search.patience or DEFAULT_PATIENCE[self.model.kind]

    @model_validator(mode="after")
    def _n_range_fits(self) -> CapacitySpec:
        if self.search.n_range is not None:
            for n in self.search.n_range:
                check_sample_count(self.model, n, "search.n_range")
        return self
