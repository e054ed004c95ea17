"""Seeded random binary datasets with distinct rows (thesis 2.3.1).

The bits are drawn by a CPU generator, so the same (model, N, seed) gives the same X and Y
on every device; they are then moved to the training device once and stay there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capacity_service.specs import CNNSpec, FCDNNSpec, RNNSpec, check_sample_count

ModelSpecT = FCDNNSpec | CNNSpec | RNNSpec

# Below this ratio of possible inputs to N, drawing without replacement from all codes is
# cheaper than rejecting duplicates.
_ENUMERATE_RATIO = 4


@dataclass(frozen=True)
class Dataset:
    x: torch.Tensor  # (N, *input_shape) float32 in {0, 1}
    y: torch.Tensor  # (N,) int64 in {0, 1}

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


def input_shape(model: ModelSpecT) -> tuple[int, ...]:
    """Shape of one input sample: (n_in,), (1, S, S) or (T, n_in)."""
    if isinstance(model, FCDNNSpec):
        return (model.input_bits,)
    if isinstance(model, CNNSpec):
        return (1, model.input_size, model.input_size)
    return (model.steps, model.n_in)


def distinct_bit_rows(n: int, bits: int, generator: torch.Generator) -> torch.Tensor:
    """(n, bits) uint8 matrix of uniform random bits whose rows are pairwise distinct."""
    if n > 1 << bits:
        raise ValueError(f"cannot draw {n} distinct rows of {bits} bits")
    if (1 << bits) <= _ENUMERATE_RATIO * n:
        codes = torch.randperm(1 << bits, generator=generator)[:n]
        shifts = torch.arange(bits, dtype=torch.int64)
        return ((codes[:, None] >> shifts) & 1).to(torch.uint8)
    rows = torch.randint(0, 2, (n, bits), generator=generator, dtype=torch.uint8)
    while True:
        duplicate = _later_duplicates(rows)
        count = int(duplicate.sum())
        if count == 0:
            return rows
        rows[duplicate] = torch.randint(0, 2, (count, bits), generator=generator, dtype=torch.uint8)


def _later_duplicates(rows: torch.Tensor) -> torch.Tensor:
    """Boolean mask of rows equal to an earlier row."""
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    positions = torch.arange(rows.shape[0])
    first = torch.full((int(inverse.max()) + 1,), rows.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return first[inverse] != positions


def make_dataset(
    model: ModelSpecT, n: int, seed: int, device: torch.device | str = "cpu"
) -> Dataset:
    """N distinct random inputs shaped for `model`, with uniform random labels."""
    check_sample_count(model, n, "n")
    generator = torch.Generator().manual_seed(seed)
    rows = distinct_bit_rows(n, model.input_bits, generator)
    labels = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int64)
    x = rows.to(device=device, dtype=torch.float32).reshape(n, *input_shape(model))
    return Dataset(x=x, y=labels.to(device))
