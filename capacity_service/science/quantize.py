"""Fixed-point weight quantization (thesis 2.3.2) as pure tensor functions.

Uniform symmetric n-bit (n >= 2): M = 2^(n-1) - 1, codes = clip(round(W / D), -M, M),
W' = D * codes: 2^n - 1 levels, so 2 bits is ternary. Binary (n = 1): codes = sign(W),
W' = D * codes with D = mean |W|. One step D per group minimizes ||W - D codes||^2
(Lloyd-Max alternation); retraining passes gradients straight through to the float W.
"""

from __future__ import annotations

import math
from typing import Any

import torch

MAX_BITS = 16
_LLOYD_MAX_ITERATIONS = 100
# Starting steps of the Lloyd-Max alternation: a coarse grid from _GRID_LOW to _GRID_HIGH
# times peak / M; a fine grid over the coarse points within _NEAR_MINIMUM (less for large
# tensors) of the smallest error, where the global minimum can sit; the best _STARTS fine
# points of that.
_COARSE_POINTS = 128
_FINE_POINTS = 2048
_NEAR_MINIMUM = 0.05
_GRID_LOW = 0.02
_GRID_HIGH = 1.25
_STARTS = 8
_CHUNK_ELEMENTS = 1 << 24  # candidates x weights evaluated at once (128 MiB of float64)


def max_code(bits: int) -> int:
    """M = 2^(n-1) - 1, the largest integer code of an n-bit symmetric quantizer."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def quantize_codes(w: torch.Tensor, bits: int, step: float | torch.Tensor) -> torch.Tensor:
    """The integer codes of `w` (as a float tensor): in {-1, +1} for 1 bit, else in
    -M..M. A zero weight is coded +1 in binary, since binary has no zero level. A tensor
    step (a model's buffer) is not checked: reading it would wait for the device."""
    if bits == 1:
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    if isinstance(step, float | int) and step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    bound = max_code(bits)
    return torch.clamp(torch.round(w / step), -bound, bound)


def quantize(w: torch.Tensor, bits: int, step: float | torch.Tensor) -> torch.Tensor:
    """W' = D * codes: the fixed-point weights as the network computes with them."""
    return step * quantize_codes(w, bits, step)


def quantization_error(w: torch.Tensor, bits: int, step: float) -> float:
    """||W - D codes||^2."""
    return float(((w - quantize(w, bits, step)) ** 2).sum())


def lloyd_max_step(w: torch.Tensor, bits: int) -> float:
    """The step D minimizing ||W - D codes(W, D)||^2 (thesis eq. 2.5-2.7).

    Alternates codes = clip(round(W / D), -M, M) and D = <W, codes> / <codes, codes>; each
    half-step lowers the error, so it stops at a fixed point. The objective has local
    minima, so the alternation starts from a few ranges (the full range max|W| / M and
    narrower ones) and keeps the best. Binary: D = mean |W|. An all-zero W gets D = 1
    (any step codes it exactly).
    """
    bound = max_code(bits)
    x = w.detach().to(torch.float64).flatten()
    closed_form = _closed_form_step(x, bits)
    if closed_form is not None:
        return closed_form
    # The error is a jagged function of D with many local minima (each change of a code
    # is a kink), so the alternation starts from the best few steps of a coarse grid over
    # the plausible range and the best fixed point wins.
    peak = float(x.abs().max())
    coarse = torch.linspace(_GRID_LOW, _GRID_HIGH, _COARSE_POINTS, dtype=torch.float64)
    coarse = coarse * (peak / bound)
    errors = _errors(x, bound, coarse)
    # rounding makes the error fluctuate from step to step by about 1/sqrt(n) of itself
    window = min(_NEAR_MINIMUM, 2.0 / math.sqrt(x.numel()))
    near = coarse[errors <= errors.min() * (1 + window)]
    spacing = float(coarse[1] - coarse[0])
    low, high = float(near.min()) - spacing, float(near.max()) + spacing
    points = max(_STARTS, round(_FINE_POINTS * window / _NEAR_MINIMUM))
    fine = torch.linspace(max(low, spacing / 2), high, points, dtype=torch.float64)
    starts = fine[_errors(x, bound, fine).argsort()[:_STARTS]]
    steps = _alternate(x, bound, starts)
    return float(steps[int(_errors(x, bound, steps).argmin())])


def lloyd_max_refine(w: torch.Tensor, bits: int, step: float) -> float:
    """The Lloyd-Max fixed point reached from `step`: a local minimum of ||W - D codes||^2
    no worse than `step` itself. Cheap (a few passes over W), for a D that was optimal for
    weights a little different from W, such as after one epoch of retraining."""
    if step <= 0:  # checked first: a bad start is an error whatever the weights
        raise ValueError(f"step must be > 0, got {step}")
    bound = max_code(bits)
    x = w.detach().to(torch.float64).flatten()
    closed_form = _closed_form_step(x, bits)
    if closed_form is not None:
        return closed_form
    start = torch.tensor([step], dtype=torch.float64)
    return float(_alternate(x, bound, start)[0])


def _closed_form_step(x: torch.Tensor, bits: int) -> float | None:
    """D where no search is needed: 1 for an all-zero W (any step codes it exactly),
    mean |W| for binary; None otherwise."""
    if x.numel() == 0 or float(x.abs().max()) == 0.0:
        return 1.0
    if bits == 1:
        return float(x.abs().mean())
    return None


def _alternate(x: torch.Tensor, bound: int, steps: torch.Tensor) -> torch.Tensor:
    """Lloyd-Max iterations on a batch of candidate steps (S,) until no code changes."""
    codes = _codes(x, bound, steps)
    for _ in range(_LLOYD_MAX_ITERATIONS):
        energy = (codes * codes).sum(dim=1)
        # a step so large that every weight rounds to zero is halved instead
        steps = torch.where(energy > 0, (codes @ x) / energy.clamp_min(1.0), steps / 2)
        updated = _codes(x, bound, steps)
        if torch.equal(updated, codes):
            break
        codes = updated
    return steps


def _codes(x: torch.Tensor, bound: int, steps: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(x[None, :] / steps[:, None]), -bound, bound)  # (S, n)


def _errors(x: torch.Tensor, bound: int, steps: torch.Tensor) -> torch.Tensor:
    """||x - D codes||^2 for each candidate step (S,), in chunks that bound the memory."""
    chunk = max(1, _CHUNK_ELEMENTS // max(1, x.numel()))
    errors = []
    for part in torch.split(steps, chunk):
        codes = _codes(x, bound, part)
        errors.append(((x[None, :] - part[:, None] * codes) ** 2).sum(dim=1))
    return torch.cat(errors)


class StraightThrough(torch.autograd.Function):
    """Forward: the fixed-point W'. Backward: the incoming gradient, unchanged, to W."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, bits: int, step: float | torch.Tensor) -> torch.Tensor:
        return quantize(w, bits, step)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grads[0], None, None


def fake_quantize(w: torch.Tensor, bits: int, step: float | torch.Tensor) -> torch.Tensor:
    """W' in the forward pass, identity in the backward pass (straight-through)."""
    result = StraightThrough.apply(w, bits, step)  # type: ignore[no-untyped-call]
    assert isinstance(result, torch.Tensor)
    return result
