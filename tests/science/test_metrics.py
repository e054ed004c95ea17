from __future__ import annotations

import math

import pytest

from capacity_service.science.metrics import (
    binary_entropy,
    bits_per_parameter,
    capacity,
    conv_bits_per_parameter,
    mutual_information,
)


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.0, 0.0),
        (1.0, 0.0),
        (0.5, 1.0),
        # -0.25 log2 0.25 - 0.75 log2 0.75 = 0.5 + 0.311278...
        (0.25, 0.8112781244591328),
        (0.75, 0.8112781244591328),
        # thesis LSTM: p = 99.52%
        (0.9952, -(0.9952 * math.log2(0.9952)) - 0.0048 * math.log2(0.0048)),
    ],
)
def test_binary_entropy_by_hand(p: float, expected: float) -> None:
    assert binary_entropy(p) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("p", [-0.1, 1.1])
def test_binary_entropy_rejects_non_probabilities(p: float) -> None:
    with pytest.raises(ValueError, match="p must lie in"):
        binary_entropy(p)


def test_mutual_information_is_n_at_perfect_accuracy() -> None:
    assert mutual_information(32_000, 1.0) == 32_000


def test_mutual_information_is_zero_at_chance() -> None:
    assert mutual_information(32_000, 0.5) == 0.0


def test_mutual_information_of_the_thesis_lstm() -> None:
    # N = 32K at p = 99.52% over 8,386 parameters: the thesis's 3.7 bits per parameter.
    information = mutual_information(32_000, 0.9952)
    assert information == pytest.approx(32_000 * (1 - 0.04408), rel=1e-3)
    assert bits_per_parameter(information, 8_386) == pytest.approx(3.65, abs=0.02)


def test_capacity_is_the_largest_information() -> None:
    assert capacity([10.0, 2500.5, 2400.0]) == 2500.5
    assert capacity([]) == 0.0


def test_bits_per_parameter_rejects_empty_model() -> None:
    with pytest.raises(ValueError):
        bits_per_parameter(10.0, 0)


def test_conv_bits_per_parameter_subtracts_the_fc_share() -> None:
    # C = 10,000 bits, 1,000 FC parameters at 2.3 bits, 2,000 conv parameters
    assert conv_bits_per_parameter(10_000, conv_params=2_000, fc_params=1_000) == pytest.approx(
        (10_000 - 2_300) / 2_000
    )
    assert conv_bits_per_parameter(
        10_000, conv_params=2_000, fc_params=1_000, fc_bits_per_param=2.0
    ) == pytest.approx(4.0)
