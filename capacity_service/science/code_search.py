"""Greedy search over the integer codes of a fixed-point FCDNN's last hidden layer.

Retraining moves float weights and rounds them, and at half capacity it leaves an FCDNN
64x2 at 4 bits 1-2% of its samples short; no retraining variant measured closed that
(docs/results.md, follow-ups). The codes are what the network computes with, so this
search changes them directly, one step at a time: a change of weight (i, j) of the last
hidden layer by +-1 (binary: a sign flip, +-2) moves only unit i's pre-activation, by
+-D h_j, so every candidate j of unit i is scored on all N samples in one N x fan-in
pass (in chunks of rows on a CPU). A change is kept only where
it holds more samples, or as many at a lower cross-entropy, so the search never loses a
sample the retraining held. Earlier layers are left alone: their candidates cost a pass
through the layers above each (N x width x width per unit), and on the 64x2 at 4 bits
their best changes raised nothing in 4 sweeps.

On the suite's three half-capacity 64x2 networks at 4 bits (N = 13,490 / 12,900 / 14,291;
the incremental retraining with its stages at lr 0.01) it raised 98.45 / 98.63 / 97.24%
to 99.86 / 99.97 / 99.13% in 88-116 s a network (one thread)
(`experiments/thesis/probe_4bit.py incremental plain --lr 0.01 --suite-seed S
--code-search`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from capacity_service.science.data import Dataset
from capacity_service.science.fixed_point import float_weight, quantizer_of
from capacity_service.science.models import FCDNN
from capacity_service.science.quantize import max_code, quantize_codes
from capacity_service.science.train import accuracy

# A sweep visits every unit of the layer CHANGES_PER_UNIT times. On the three
# half-capacity 64x2 networks at 4 bits the search stopped by itself after 13 and 19
# sweeps and was still gaining a sample a few sweeps at 20; a sweep there takes ~5 s.
MAX_SWEEPS = 20
CHANGES_PER_UNIT = 4
_LOSS_CAP = 50.0  # a sample's cross-entropy counts at most this much in a tie-break
# Each candidate pass builds temporaries of rows x fan-in elements. On a CPU, past a few
# MB each is a fresh mmap whose page faults cost more than its arithmetic (FCDNN 128x3 at
# N = 2^16: 154 of 277 CPU seconds a sweep in the kernel, 107 in all when chunked), so rows
# are scored in chunks of at most this many elements; a single chunk (the 64x2's
# N < 16,384) scores bitwise as the whole.
CPU_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class CodeSearchOutcome:
    accuracy: float  # after the search, as `train.accuracy` measures it
    changes: int  # codes changed (each by one step)
    sweeps: int


def _steps(codes: torch.Tensor, bits: int) -> list[torch.Tensor]:
    """Each direction's change of every code of a unit: -1 and +1; binary codes (+-1, no
    zero) only flip sign."""
    if bits == 1:
        return [-2 * codes]
    return [torch.full_like(codes, -1.0), torch.full_like(codes, 1.0)]


def searched_layer(model: FCDNN) -> str:
    """The group whose codes the search changes: the last hidden layer's weight."""
    return f"hidden.{len(model.hidden) - 1}.weight"


@torch.no_grad()
def search_codes(model: FCDNN, data: Dataset, max_sweeps: int = MAX_SWEEPS) -> CodeSearchOutcome:
    """Change the last hidden layer's codes of the quantized `model` (every weight fixed,
    `apply_precision`) one step at a time while that holds more of `data`'s samples,
    ties broken by the summed cross-entropy; stops after a sweep that changes nothing, or
    after `max_sweeps`. The float weights take the found fixed-point values."""
    name = searched_layer(model)
    quantizer = quantizer_of(model, name)
    if quantizer is None or quantizer.frozen is not None:
        raise ValueError(f"{name} must be quantized with every weight fixed")
    bits, step = quantizer.bits, float(quantizer.step)
    weight = float_weight(model, name)
    codes = quantize_codes(weight, bits, step).to(weight.dtype)
    bound = max_code(bits)

    last = model.hidden[-1]
    assert isinstance(last, nn.Linear)
    below = data.x.to(weight.dtype)  # the last hidden layer's input, as the model computes it
    for layer in model.hidden[:-1]:
        below = torch.relu(layer(below))
    sign = (2 * data.y - 1).to(weight.dtype)  # +1 where class 1 is right, -1 where class 0
    output = model.output.weight
    toward = output[1] - output[0]  # the margin's weight on each unit
    offset = model.output.bias[1] - model.output.bias[0]
    pre = below @ (step * codes).T + last.bias
    margin = sign * (torch.relu(pre) @ toward + offset)
    wins_tie = data.y == 0  # argmax picks class 0 on equal logits

    # on a GPU one pass over all rows costs less than a launch per chunk
    rows = data.n if below.is_cuda else max(1, CPU_CHUNK_ELEMENTS // below.shape[1])
    chunks = [slice(start, start + rows) for start in range(0, data.n, rows)]

    def scored(chunk_margins: Iterable[torch.Tensor]) -> torch.Tensor:
        """Per column of the margins, given chunk by chunk of rows: samples held, less a
        fraction (< 1) for their summed cross-entropy. The current margins are scored
        through the same chunks as the candidates, so both sums add the same rows in the
        same order (float32 softplus may still round a column apart from a matrix in the
        last bit: a tie-break at that level is noise either way)."""
        held = torch.zeros((), dtype=torch.float64, device=below.device)
        loss = torch.zeros_like(held)
        for part, margins in zip(chunks, chunk_margins, strict=True):
            wins = (margins > 0) | ((margins == 0) & wins_tie[part, None])
            held = held + wins.sum(0, dtype=torch.float64)
            loss = loss + F.softplus(-margins).clamp(max=_LOSS_CAP).sum(0, dtype=torch.float64)
        return held - loss / (_LOSS_CAP * data.n + 1)

    current = scored(margin[p, None] for p in chunks)[0]  # changes only when one is kept
    changes, sweeps = 0, 0
    while sweeps < max_sweeps and bool(current <= data.n - 1):
        sweeps += 1
        changed = 0
        for unit in [u for u in range(codes.shape[0]) for _ in range(CHANGES_PER_UNIT)]:
            rest = margin - sign * torch.relu(pre[:, unit]) * toward[unit]
            best = float(current)
            found: tuple[float, int] | None = None  # (change, j)
            for deltas in _steps(codes[unit], bits):
                scores = scored(
                    rest[p, None]
                    + sign[p, None]
                    * torch.relu(pre[p, unit, None] + step * deltas * below[p])
                    * toward[unit]
                    for p in chunks
                )
                scores[(codes[unit] + deltas).abs() > bound] = -torch.inf
                j = int(scores.argmax())
                if float(scores[j]) > best:
                    best, found = float(scores[j]), (float(deltas[j]), j)
            if found is not None:
                delta, j = found
                codes[unit, j] += delta
                pre[:, unit] += (delta * step) * below[:, j]
                margin = rest + sign * torch.relu(pre[:, unit]) * toward[unit]
                current = scored(margin[p, None] for p in chunks)[0]
                changed += 1
        changes += changed
        if changed == 0:
            break
    weight.copy_(step * codes)  # the quantizer reads these codes back exactly
    return CodeSearchOutcome(accuracy=accuracy(model, data), changes=changes, sweeps=sweeps)
