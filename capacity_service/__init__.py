"""capacity_service: the memorization capacity of neural networks under weight quantization.

The science functions are imported lazily, so that `import capacity_service.api` (or the
specs) does not pull in torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "mutual_information": "capacity_service.science.metrics",
    "binary_entropy": "capacity_service.science.metrics",
    "count_parameters": "capacity_service.science.models",
    "measure": "capacity_service.science.measure",
    "search_n": "capacity_service.science.search",
    "search_capacity": "capacity_service.science.search",
    "CapacitySpec": "capacity_service.specs",
    "CapacityResult": "capacity_service.specs",
    "lloyd_max_step": "capacity_service.science.quantize",
    "quantize": "capacity_service.science.quantize",
    "sweep": "capacity_service.science.sweep",
    "SweepSpec": "capacity_service.specs",
    "SweepResult": "capacity_service.specs",
    "MeasureSpec": "capacity_service.specs",
    "MeasureResult": "capacity_service.specs",
}

__all__ = [
    "CapacityResult",
    "CapacitySpec",
    "MeasureResult",
    "MeasureSpec",
    "SweepResult",
    "SweepSpec",
    "__version__",
    "binary_entropy",
    "count_parameters",
    "lloyd_max_step",
    "measure",
    "mutual_information",
    "quantize",
    "search_capacity",
    "search_n",
    "sweep",
]

if TYPE_CHECKING:
    from capacity_service.science.measure import measure
    from capacity_service.science.metrics import binary_entropy, mutual_information
    from capacity_service.science.models import count_parameters
    from capacity_service.science.quantize import lloyd_max_step, quantize
    from capacity_service.science.search import search_capacity, search_n
    from capacity_service.science.sweep import sweep
    from capacity_service.specs import (
        CapacityResult,
        CapacitySpec,
        MeasureResult,
        MeasureSpec,
        SweepResult,
        SweepSpec,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'capacity_service' has no attribute {name!r}")
