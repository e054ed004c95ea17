"""The capacity search's settings, its prior N and first rung, and the points it tries."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from capacity_service.science.metrics import DEFAULT_FC_BITS_PER_PARAM
from capacity_service.science.models import count_parameters
from capacity_service.specs import CapacitySpec, SearchSpec, TrialRecord, largest_search_n

# Where the capacity of a kind usually lies, in bits per parameter (thesis 2.4; for a CNN,
# of its convolution layers, its dense layers counted at DEFAULT_FC_BITS_PER_PARAM): the
# search looks first around N = parameters x these.
PRIOR_BITS = {"fcdnn": 2.3, "cnn": 3.0, "lstm": 3.7, "gru": 3.7, "rnn": 3.7}
PRIOR_FACTORS = (1.0, 0.8, 1.25, 0.6, 1.6)  # the design's N, as multiples of the prior N
DESIGN_RATES = 5  # learning rates at each N of the design, log-spaced over the range
WIDEN = 1.5  # a best N at the edge of those tried: try N x 1.5 (or / 1.5) next
# The first rung, in epochs at the prior N and the largest batch (counted in steps), by
# kind. An LSTM learns nothing visible at first: LSTM-32 trials at N = 24.8k-38.8k stood
# at 50.3-53% after 4 epochs and 51.8-54.7% after 24, so a 4-epoch rung stopped trials at
# random; with 24, 20-minute searches reached 3.56 / 3.47 / 3.47 bits/param (seeds 0-2),
# with 4, 3.27 / 2.93 (seeds 0-1). A CNN 3x3 stood at 50-56% after 4 epochs, live or not,
# and its live trials at 53-66% after 12 while the dead ones stayed where they were: in
# 15-minute searches (seeds 0-2) a 12-epoch rung gave 3.000 / 3.000 / 3.000 conv
# bits/param (seed 0 2.455 on another day), a 4-epoch one 2.223 / 2.936 / 2.965 (24 gave
# 2.22 on seed 0, before the CNN's zero output layer).
RUNG_EPOCHS = {"fcdnn": 4, "cnn": 12, "lstm": 24, "gru": 4, "rnn": 4}
ETA = 3  # successive halving: the best third of a rung goes on
RUNGS = 4  # rungs at 1, 3, 9 and 27 first rungs; past the last a trial runs to its end
# From this rung on (by kind), a trial whose best accuracy did not rise since the rung
# before stops (SearchPlan._stalled). For CNN only, where it was measured: a CNN 3x3 whose
# units died holds one accuracy to the sample for the rest of its schedule
STALL_RUNG = {"cnn": 2}
BUCKET = 1.5  # trials compete at a rung with those whose N lies in the same 1.5x band
EXPLORE = 0.3  # new trials start in the first 30% of the time budget (see SearchPlan._time_admits)
CANDIDATES = 2000  # random points scored by expected improvement per batch of asks
SURROGATE_TRIALS = 120  # trials the model is fit on (the best half, then the latest)
INITIAL = 10  # trials known before the model is fit (random points until then)
# The share of trials after the design that repeat the best finished one, by kind: for
# FCDNN only, where it was measured to help (FCDNN 32x1, 60 s, 3 seeds: 2.17 -> 2.24
# bits/param); an LSTM-32 search whose best finished trial is an early small N spent its
# rows repeating it
REFINE = {"fcdnn": 0.5}
REFINE_FACTORS = (1.0, 1.03, 1.06)  # at its N, or this much above
CULL = 0.7  # once no trial starts any more, one past the first rung that knows fewer than
# 70% of the best running trial's samples beyond chance stops (search_plan.known_beyond_chance)


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
    """Optimizer steps to the first rung: the kind's RUNG_EPOCHS epochs at the prior N and
    the largest batch size (steps, not epochs, so a small N is not starved)."""
    epochs = RUNG_EPOCHS[spec.model.kind]
    return epochs * math.ceil(prior_n(spec) / max(spec.batch_sizes))


def stack_rows(search: SearchSpec) -> int:
    """K, the trials trained together (set by device before the search starts)."""
    assert search.batch is not None
    return search.batch


def point_of(record: TrialRecord) -> Point:
    return Point(
        n=record.n,
        lr=record.lr,
        momentum=record.momentum,
        lr_decay=record.lr_decay,
        batch_size=record.batch_size,
    )


def decode(x: list[Any], batch_sizes: tuple[int, ...]) -> Point:
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
