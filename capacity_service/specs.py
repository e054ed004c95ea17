"""Job specs and results: the one contract shared by the API, store, workers, CLI and tests.

Everything here is plain pydantic (no torch), so the API process can validate specs
without importing the science stack. Unknown keys are rejected everywhere.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _known_device(value: str) -> str:
    if not DEVICE_PATTERN.fullmatch(value):
        raise ValueError("must be one of auto, cpu, cuda, cuda:<index>")
    return value


Device = Annotated[str, AfterValidator(_known_device)]
# JSON's types as given: 8 is an integer, "8", 8.5 and true are not (pydantic's lax mode
# would turn true into 1 and "8" into 8)
Int = Annotated[int, Strict()]
Real = Annotated[float, Strict()]  # an integer is a real number too


class Frozen(BaseModel):
    """Base of every spec and result: immutable, unknown keys are an error, and so are
    NaN and infinity (no budget or bound is infinite, and JSON cannot carry them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- models ------------------------------------------------------------------------------


class FCDNNSpec(Frozen):
    """Fully connected network: `depth` hidden layers of `width` ReLU units, 2 outputs."""

    kind: Literal["fcdnn"] = "fcdnn"
    width: Int = Field(32, ge=1, description="units per hidden layer")
    depth: Int = Field(1, ge=1, description="number of hidden layers")
    n_in: Int | None = Field(None, ge=1, description="input bits; defaults to width")

    @property
    def input_bits(self) -> int:
        return self.n_in if self.n_in is not None else self.width


class CNNSpec(Frozen):
    """Convolution stack on a 1 x S x S image of random bits, three 2x2 max-pools, FC head."""

    kind: Literal["cnn"] = "cnn"
    kernel: Literal[3, 5] = Field(3, description="kernel size, the same in every layer")
    conv_layers: Int = Field(3, ge=3, le=9, description="number of convolution layers")
    channels: Int = Field(8, ge=1, description="channels of every convolution layer")
    input_size: Int = Field(
        32, ge=8, description="image side; a multiple of 8", json_schema_extra={"multipleOf": 8}
    )
    fc_hidden: Int = Field(0, ge=0, description="units of a hidden FC layer (0: none)")

    @field_validator("input_size")
    @classmethod
    def _divisible_by_pools(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8 (three 2x2 max-pools halve it 3 times)")
        return value

    @property
    def input_bits(self) -> int:
        return self.input_size * self.input_size


class RNNSpec(Frozen):
    """Recurrent network over `steps` input vectors; one label read at the last step."""

    kind: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden: Int = Field(32, ge=1, description="hidden state size")
    n_in: Int = Field(32, ge=1, description="input bits per step")
    steps: Int = Field(5, ge=1, description="sequence length T")

    @property
    def input_bits(self) -> int:
        return self.steps * self.n_in


ModelSpec = Annotated[FCDNNSpec | CNNSpec | RNNSpec, Field(discriminator="kind")]
MODEL_KINDS = ("fcdnn", "cnn", "lstm", "gru", "rnn")


# --- training and measurement ------------------------------------------------------------


class TrainSpec(Frozen):
    """SGD with momentum; the learning rate decays by `lr_decay` when accuracy plateaus."""

    lr: Real = Field(0.02, gt=0, description="initial learning rate")
    momentum: Real = Field(0.9, ge=0, lt=1, description="SGD momentum, in [0, 1)")
    batch_size: Int = Field(32, ge=1, description="minibatch size")
    epochs: Int = Field(1500, ge=1, description="epoch budget")
    lr_decay: Real = Field(0.3, gt=0, lt=1, description="factor applied on a plateau")
    patience: Int = Field(50, ge=1, description="epochs without a better accuracy = plateau")
    max_decays: Int = Field(4, ge=0, description="plateaus tolerated before training stops")


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


def check_n_fits(model: FCDNNSpec | CNNSpec | RNNSpec, n: int) -> None:
    """Raise ValueError when N distinct inputs cannot exist for this model's input size."""
    # compare bit lengths first: 1 << input_bits of a huge model would not fit in memory
    if model.input_bits < n.bit_length() and n > 1 << model.input_bits:
        raise ValueError(
            f"n = {n} exceeds the 2^{model.input_bits} = {1 << model.input_bits} distinct "
            f"inputs of {model.input_bits} bits; lower n or enlarge the input "
            "(n_in, width or steps)"
        )


class RetrainSpec(TrainSpec):
    """Fine-tuning after quantization: a few epochs at a small learning rate (thesis 2.3.3).
    0 epochs measures direct quantization only."""

    lr: Real = Field(0.002, gt=0, description="initial learning rate of retraining")
    epochs: Int = Field(20, ge=0, description="retraining epochs per precision (0: none)")
    patience: Int = Field(5, ge=1, description="epochs without a better accuracy = plateau")
    max_decays: Int = Field(2, ge=0, description="plateaus tolerated before retraining stops")


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
    "cnn": (0.002, 0.1),
    "lstm": (0.01, 0.3),
    "gru": (0.01, 0.3),
    "rnn": (0.005, 0.2),
}


class SearchSpec(Frozen):
    """Budget and bounds of the three-stage capacity search (thesis 2.3.1)."""

    budget_trials: Int = Field(60, ge=1, description="trainings at most, all stages")
    budget_seconds: Real = Field(600, gt=0, description="wall seconds at most")
    batch: Int | None = Field(
        None, ge=1, description="K: trials trained together (default 8 on a CPU, 256 on a GPU)"
    )
    epochs: Int = Field(1500, ge=1, description="epoch budget of each trial")
    patience: Int = Field(50, ge=1, description="epochs without a better accuracy = plateau")
    max_decays: Int = Field(4, ge=0, description="plateaus tolerated before a trial stops")
    lr: tuple[Real, Real] | None = Field(
        None, description="learning rate, log scale (default by kind: DEFAULT_LR)"
    )
    lr_decay: tuple[Real, Real] = Field((0.1, 0.5), description="decay factor")
    momentum: tuple[Real, Real] = Field((0.6, 0.99), description="SGD momentum")
    batch_sizes: tuple[Int, ...] = Field((64, 128), description="minibatch sizes")
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
    def _batch_sizes(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
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

    @model_validator(mode="after")
    def _n_range_fits(self) -> CapacitySpec:
        if self.search.n_range is not None:
            for n in self.search.n_range:
                check_sample_count(self.model, n, "search.n_range")
        return self


def check_sample_count(model: FCDNNSpec | CNNSpec | RNNSpec, n: int, field: str) -> None:
    """ValueError naming `field` unless 2 <= N <= the distinct inputs of the model."""
    if n < 2:
        raise ValueError(f"{field}: every N must be >= 2, got {n}")
    try:
        check_n_fits(model, n)
    except ValueError as error:
        raise ValueError(f"{field}: {error}") from None


# --- sizes, computed without torch (the API checks its limits with these) ---------------

GATE_BLOCKS = {"lstm": 4, "gru": 3, "rnn": 1}  # LSTM i, f, g, o; GRU r, z, n; tanh RNN
N_CLASSES = 2
POOL_FACTOR = 8  # a search's data pool holds up to 8 samples per parameter (capacity < 4 bits)


def parameter_total(model: FCDNNSpec | CNNSpec | RNNSpec) -> int:
    """Effective parameters of `model` by arithmetic; equals science.models.count_parameters
    (a test compares them) without building a module."""
    if isinstance(model, FCDNNSpec):
        w = model.width  # closed form: a depth of 10^15 must not build a list
        hidden = model.input_bits * w + w + (model.depth - 1) * (w * w + w)
        return hidden + w * N_CLASSES + N_CLASSES
    if isinstance(model, CNNSpec):
        channels = [1] + [model.channels] * model.conv_layers
        conv = sum(model.kernel**2 * a * b + b for a, b in pairwise(channels))
        features = model.channels * (model.input_size // 8) ** 2
        fc = features * model.fc_hidden + model.fc_hidden if model.fc_hidden else 0
        return conv + fc + (model.fc_hidden or features) * N_CLASSES + N_CLASSES
    rows = GATE_BLOCKS[model.kind] * model.hidden
    recurrent = rows * (model.n_in + model.hidden + 1)
    if model.kind == "gru":
        recurrent += model.hidden  # b_hn, inside the reset gate's product
    return recurrent + model.hidden * N_CLASSES + N_CLASSES


def most_distinct_inputs(model: FCDNNSpec | CNNSpec | RNNSpec) -> int:
    """2 ** input bits, capped where no dataset could reach anyway (an int64 index)."""
    return 1 << min(model.input_bits, 62)


def largest_search_n(spec: CapacitySpec) -> int:
    """The largest N a capacity search may train on: the upper end of `search.n_range`, or
    POOL_FACTOR samples per parameter (capped by the distinct inputs)."""
    if spec.search.n_range is not None:
        return spec.search.n_range[1]
    return min(most_distinct_inputs(spec.model), POOL_FACTOR * parameter_total(spec.model))


# --- results -----------------------------------------------------------------------------


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
    # "prior", "widen", "bayes" (older searches: "bracket", "grid", "bayes")
    stage: Literal["prior", "widen", "bayes", "bracket", "grid"]
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
