"""How many trials fit a device: the default K, and a check before any training.

The estimate is deliberately generous (activations kept for the backward pass, their
gradients, parameters with velocity and gradient, each row's sample order, the pool), so a
search refused here would not have fitted, and one accepted runs without running out of
memory in the middle, with half its trials stored.
"""

from __future__ import annotations

import torch

from capacity_service.science.models import ModelSpecT, count_parameters
from capacity_service.specs import GATE_BLOCKS, CNNSpec, FCDNNSpec

# On 2 CPU cores a step's cost grows with K (FCDNN 32x1: 0.13 ms at K = 1, 0.21 at 8, 0.51
# at 32; LSTM-32 about 1.1 ms per row from K = 4), and a search's capacity rests on its best
# trials finishing before the deadline: the 60 s FCDNN 32x1 search reached 2.10-2.17
# bits/param at K = 8 against 1.94-1.98 at K = 32 (same seeds, one run).
DEFAULT_K_CPU = 8
DEFAULT_K_GPU = 256  # a GPU needs wide stacks: launches, not arithmetic, bound small ones
FLOAT_BYTES = 4


def default_k(device: torch.device) -> int:
    return DEFAULT_K_GPU if device.type == "cuda" else DEFAULT_K_CPU


def activation_floats(model: ModelSpecT) -> int:
    """Floats of activation one sample of one row keeps through a training step (forward
    values, their gradients and the kernels' scratch, about 3 of each layer's output)."""
    if isinstance(model, FCDNNSpec):
        return 3 * (model.width * model.depth + model.input_bits + 2)
    if isinstance(model, CNNSpec):
        return 3 * (model.channels * model.input_size**2 + model.input_bits)
    gates = GATE_BLOCKS[model.kind] * model.hidden
    return 3 * model.steps * (gates + 2 * model.hidden + model.n_in)


def training_bytes(model: ModelSpecT, k: int, batch_size: int, pool_n: int) -> int:
    """Bytes that K stacked trials of batch `batch_size` on a pool of `pool_n` need."""
    params = count_parameters(model).total
    per_row = (
        activation_floats(model) * batch_size * FLOAT_BYTES
        + 3 * params * FLOAT_BYTES  # weights, velocity, gradient
        + pool_n * 8  # the row's sample order (int64)
    )
    return k * per_row + pool_n * (model.input_bits * FLOAT_BYTES + 8)


def free_bytes(device: torch.device) -> int | None:
    """Memory free for this process on `device`, or None where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(
    model: ModelSpecT, k: int, batch_size: int, pool_n: int, device: torch.device
) -> None:
    """Refuse, naming the fields to change, K trials that would not fit `device`."""
    free = free_bytes(device)
    if free is None:
        return
    need = training_bytes(model, k, batch_size, pool_n)
    if need > 0.8 * free:  # leave room for the allocator and the rest of the process
        raise ValueError(
            f"search.batch: K = {k} trials at batch size {batch_size} on a pool of "
            f"{pool_n:,} samples need about {need / 2**30:.1f} GiB on {device}, which has "
            f"{free / 2**30:.1f} GiB free; lower search.batch, search.batch_sizes or "
            "search.n_range"
        )
