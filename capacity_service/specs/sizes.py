"""Sizes by arithmetic, without torch (the API checks its limits with these)."""

from __future__ import annotations

from itertools import pairwise

from capacity_service.specs.jobs import CapacitySpec
from capacity_service.specs.models import CNNSpec, FCDNNSpec, RNNSpec

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
