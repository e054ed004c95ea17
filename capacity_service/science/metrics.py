"""The information-theoretic metric of the memorization task (thesis eq. 2.1, 2.2)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def binary_entropy(p: float) -> float:
    """H2(p) = -p log2 p - (1 - p) log2 (1 - p), with H2(0) = H2(1) = 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if p in (0.0, 1.0):
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def mutual_information(n: int, p: float) -> float:
    """Bits a network that labels N random samples with accuracy p has memorized.

    I = N (1 - H2(p)): N bits at p = 1, none at p = 0.5. An accuracy below chance carries
    information too (flip every answer), which the formula counts symmetrically.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return n * (1.0 - binary_entropy(p))


def capacity(mutual_informations: Iterable[float]) -> float:
    """C = the largest I over every (N, hyperparameters) tried; 0 for no trials."""
    return max(mutual_informations, default=0.0)


def bits_per_parameter(capacity_bits: float, params: int) -> float:
    if params <= 0:
        raise ValueError(f"params must be > 0, got {params}")
    return capacity_bits / params


DEFAULT_FC_BITS_PER_PARAM = 2.3  # thesis 2.4.2: assumed capacity of a CNN's FC layers


def conv_bits_per_parameter(
    capacity_bits: float,
    conv_params: int,
    fc_params: int,
    fc_bits_per_param: float = DEFAULT_FC_BITS_PER_PARAM,
) -> float:
    """Capacity of a CNN's convolution layers alone: (C - b_fc * P_fc) / P_conv."""
    if conv_params <= 0:
        raise ValueError(f"conv_params must be > 0, got {conv_params}")
    return (capacity_bits - fc_bits_per_param * fc_params) / conv_params
