"""The contract's guards that the API relies on: no NaN or infinity, no unbounded work in
validation, sizes computed without torch."""

from __future__ import annotations

import math
import sys

import pytest
from pydantic import ValidationError

from capacity_service.specs import (
    CapacitySpec,
    FCDNNSpec,
    MeasureSpec,
    largest_search_n,
    parameter_total,
)


@pytest.mark.parametrize("value", [math.inf, math.nan, -math.inf])
def test_no_infinite_or_nan_budgets(value: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        CapacitySpec.model_validate({"model": {"kind": "fcdnn"},
                                     "search": {"budget_seconds": value}})  # fmt: skip


def test_device_must_match_whole() -> None:
    with pytest.raises(ValidationError, match="auto, cpu, cuda"):
        MeasureSpec.model_validate({"model": {"kind": "fcdnn"}, "device": "cpu\n"})


def test_huge_input_is_refused_without_building_two_to_the_input_bits() -> None:
    # 2^(10^9) would need 125 MB and minutes; the check compares bit lengths instead
    spec = MeasureSpec.model_validate({"model": {"kind": "fcdnn", "width": 10**9}, "n": 1000})
    assert parameter_total(spec.model) > 10**18
    with pytest.raises(ValidationError, match="distinct"):
        MeasureSpec.model_validate({"model": {"kind": "fcdnn", "width": 4}, "n": 17})


def test_largest_search_n_by_hand() -> None:
    # FCDNN 32x1: 1,122 parameters, 8 samples each (the pool), far below 2^32 inputs
    assert largest_search_n(CapacitySpec(model=FCDNNSpec(width=32))) == 8 * 1_122
    # 4 input bits: only 16 distinct inputs exist
    assert largest_search_n(CapacitySpec(model=FCDNNSpec(width=4))) == 16
    bounded = CapacitySpec.model_validate(
        {"model": {"kind": "fcdnn"}, "search": {"n_range": [100, 900]}}
    )
    assert largest_search_n(bounded) == 900


def test_specs_module_does_not_import_torch() -> None:
    assert "capacity_service.specs" in sys.modules
    import subprocess

    code = "import capacity_service.specs, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
