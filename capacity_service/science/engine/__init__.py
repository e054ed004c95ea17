"""The batched engine: train K memorization trials of one architecture at once.

Small models waste a processor when trained one at a time: each step is a handful of tiny
kernels whose launch cost dwarfs their arithmetic. Here K trials of any kind are one
stacked model, each trial with its own initialization, learning rate, momentum, decay
factor, N, batch size and shuffling, following the sequential trainer's schedule, so a
trial's result matches `train.train_memorization` up to floating-point reassociation.

- `stack`: the model-independent part (batches, cursors, masks, schedule, rows dropping
  out as their trials end).
- `stacked`: the stacked parameters and the autograd step every kind shares.
- `fcdnn`, `cnn`, `recurrent`: one module per kind.
- `memory`: the default K of a device, and the check that K trials fit it.
- `native`: the fused CPU kernels of the recurrent kinds (`recurrent_kernels.c`) and the
  CNN (`cnn_kernels.c`), built at first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from capacity_service.science.data import Dataset
from capacity_service.science.engine.cnn import StackedCNN
from capacity_service.science.engine.fcdnn import StackedFCDNN
from capacity_service.science.engine.memory import activation_floats
from capacity_service.science.engine.recurrent import StackedRNN
from capacity_service.science.engine.stack import (
    OutcomeCallback,
    StackedTrainer,
    Supervisor,
    TrialConfig,
)
from capacity_service.science.engine.stacked import StackedModel
from capacity_service.science.models import ModelSpecT, initial_parameters
from capacity_service.science.schedule import TrainOutcome
from capacity_service.specs import CNNSpec, FCDNNSpec
from capacity_service.stopping import StopCheck

__all__ = [
    "EngineRun",
    "StackedModel",
    "StackedTrainer",
    "Supervisor",
    "TrialConfig",
    "stack_models",
    "train_trials",
]


@dataclass(frozen=True, kw_only=True)
class EngineRun:
    outcomes: tuple[TrainOutcome | None, ...]  # in the order of the configs; None: not run
    engine: str  # "batched"


def stack_models(model: ModelSpecT, configs: Sequence[TrialConfig], pool: Dataset) -> StackedModel:
    """The stacked model of `configs`: row k initialized as trial k's sequential model."""
    trials = [initial_parameters(model, c.init_seed) for c in configs]
    stacked: StackedModel
    if isinstance(model, FCDNNSpec):
        stacked = StackedFCDNN(model, trials, pool.x.device)
    elif isinstance(model, CNNSpec):
        stacked = StackedCNN(model, trials, pool.x.device)
    else:
        stacked = StackedRNN(model, trials, pool.x.device)
    stacked.floats_per_sample = activation_floats(model)
    return stacked


def train_trials(
    model: ModelSpecT,
    pool: Dataset,
    configs: Sequence[TrialConfig],
    should_stop: StopCheck | None = None,
    deadline: float | None = None,
    on_outcome: OutcomeCallback | None = None,
    supervisor: Supervisor | None = None,
    rows: int | None = None,
) -> EngineRun:
    """Train every trial of `configs` on the first N of `pool`, all at once.

    At the `deadline` (a time.perf_counter() value) trials end early with the best
    accuracy they reached, as if their epoch budget had run out. `should_stop` is asked at
    each epoch end; trials it leaves unfinished are None in the result. `on_outcome` hears
    of each trial the moment it finishes (so it can be stored at once).

    A `supervisor` (a search's successive halving) may stop trials at their epoch ends and
    fill free rows with new trials, up to `rows` at once (default: len(configs)); the
    outcomes then cover every trial it admitted, in order.
    """
    trainer = StackedTrainer(
        lambda chunk: stack_models(model, chunk, pool),
        configs, pool, on_outcome, supervisor, rows or len(configs),
    )  # fmt: skip
    return EngineRun(outcomes=tuple(trainer.train(deadline, should_stop)), engine="batched")
