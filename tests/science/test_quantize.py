from __future__ import annotations

import pytest
import torch

from capacity_service.science.quantize import (
    fake_quantize,
    lloyd_max_refine,
    lloyd_max_step,
    max_code,
    quantization_error,
    quantize,
    quantize_codes,
)


def grid_minimum(w: torch.Tensor, bits: int) -> float:
    """The smallest ||W - D codes||^2 over 20,001 steps from 0.05 to 1.5 times max|W| / M."""
    bound = max_code(bits)
    peak = float(w.abs().max())
    best = float("inf")
    for steps in torch.linspace(0.05, 1.5, 20_001, dtype=torch.float64).split(500):
        steps = steps * peak / bound
        codes = torch.clamp(torch.round(w[None, :] / steps[:, None]), -bound, bound)
        best = min(best, float(((w[None, :] - steps[:, None] * codes) ** 2).sum(dim=1).min()))
    return best


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_lloyd_max_step_reaches_the_grid_minimum(bits: int, distribution: str) -> None:
    generator = torch.Generator().manual_seed(bits)
    w = torch.randn(1500, generator=generator, dtype=torch.float64)
    if distribution == "uniform":
        w = torch.rand(1500, generator=generator, dtype=torch.float64) * 2 - 1
    error = quantization_error(w, bits, lloyd_max_step(w, bits))
    best = grid_minimum(w, bits)
    assert (error - best) / best < 1e-3


def test_lloyd_max_refine_by_hand() -> None:
    w = torch.tensor([0.1, 0.9, 1.0, -1.1], dtype=torch.float64)
    # 2 bits (M = 1) from D = 0.15: codes 1, 1, 1, -1 -> D = 3.1 / 4 = 0.775; codes
    # 0, 1, 1, -1 -> D = 3.0 / 3 = 1.0; the codes stay: a fixed point, error 0.03
    assert lloyd_max_refine(w, 2, 0.15) == pytest.approx(1.0)
    assert quantization_error(w, 2, 1.0) == pytest.approx(0.03)
    assert lloyd_max_refine(w, 2, 1.0) == pytest.approx(1.0)  # a fixed point stays
    assert lloyd_max_refine(w, 1, 0.3) == pytest.approx(3.1 / 4)  # binary: mean |W|


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_lloyd_max_refine_reaches_a_fixed_point_no_worse_than_its_start(bits: int) -> None:
    generator = torch.Generator().manual_seed(bits)
    w = torch.randn(2000, generator=generator, dtype=torch.float64)
    step = lloyd_max_step(w, bits)
    moved = w + 0.01 * torch.randn(2000, generator=generator, dtype=torch.float64)
    refined = lloyd_max_refine(moved, bits, step)
    assert quantization_error(moved, bits, refined) <= quantization_error(moved, bits, step)
    codes = quantize_codes(moved, bits, refined)  # D = <W, codes> / <codes, codes>
    assert refined == pytest.approx(float(codes @ moved / (codes @ codes)), rel=1e-12)
    with pytest.raises(ValueError, match="step must be > 0"):
        lloyd_max_refine(w, bits, 0.0)


def test_binary_step_is_mean_absolute_weight() -> None:
    w = torch.tensor([0.5, -1.5, 2.0, -0.25])
    assert lloyd_max_step(w, 1) == pytest.approx(4.25 / 4)
    torch.testing.assert_close(
        quantize(w, 1, 1.0625), torch.tensor([1.0625, -1.0625, 1.0625, -1.0625])
    )


def test_hand_computed_codes() -> None:
    w = torch.tensor([0.04, -0.26, 0.5, 1.9, -3.0])
    # 3 bits: M = 3; w / 0.5 = 0.08, -0.52, 1, 3.8, -6 -> 0, -1, 1, 3, -3
    torch.testing.assert_close(quantize_codes(w, 3, 0.5), torch.tensor([0.0, -1.0, 1.0, 3.0, -3.0]))
    torch.testing.assert_close(quantize(w, 3, 0.5), torch.tensor([0.0, -0.5, 0.5, 1.5, -1.5]))
    # 2 bits is ternary
    torch.testing.assert_close(quantize_codes(w, 2, 0.5), torch.tensor([0.0, -1.0, 1.0, 1.0, -1.0]))


@pytest.mark.parametrize("bits", range(1, 9))
def test_at_most_2n_minus_1_levels(bits: int) -> None:
    w = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    codes = quantize_codes(w, bits, lloyd_max_step(w, bits))
    levels = 2 if bits == 1 else 2**bits - 1
    assert torch.unique(codes).numel() <= levels
    assert float(codes.abs().max()) <= max_code(bits)


def test_zero_tensor_is_guarded() -> None:
    zeros = torch.zeros(10)
    step = lloyd_max_step(zeros, 4)
    assert step > 0
    torch.testing.assert_close(quantize(zeros, 4, step), zeros)


def test_max_code_rejects_bad_precisions() -> None:
    assert max_code(2) == 1 and max_code(8) == 127 and max_code(16) == 32767
    with pytest.raises(ValueError, match=r"bits must be in 1\.\.16"):
        max_code(0)
    with pytest.raises(ValueError):
        max_code(17)


def test_straight_through_gradient_is_unchanged() -> None:
    w = torch.randn(20, requires_grad=True)
    upstream = torch.randn(20)
    (fake_quantize(w, 3, 0.4) * upstream).sum().backward()
    assert w.grad is not None
    torch.testing.assert_close(w.grad, upstream)
