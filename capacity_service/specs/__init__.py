"""Job specs and results: the one contract shared by the API, store, workers, CLI and tests.

Everything here is plain pydantic (no torch), so the API process can validate specs
without importing the science stack. Unknown keys are rejected everywhere.

`base` holds the frozen base model and the strict field types, `models` the network specs,
`training` the training settings, `jobs` the specs of the job kinds, `sizes` the sizes
computed by arithmetic, `results` the results; every public name is importable from here.
"""

from capacity_service.specs.base import (
    DEVICE_PATTERN,
    Device,
    Frozen,
    Int,
    Progress,
    ProgressValue,
    Real,
)
from capacity_service.specs.jobs import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_PATIENCE,
    DEFAULT_PRECISIONS,
    MAX_BITS,
    CapacitySpec,
    MeasureSpec,
    SearchSpec,
    SweepSpec,
)
from capacity_service.specs.models import (
    MODEL_KINDS,
    CNNSpec,
    FCDNNSpec,
    ModelSpec,
    RNNSpec,
    check_n_fits,
    check_sample_count,
)
from capacity_service.specs.results import (
    CapacityResult,
    CurvePoint,
    Ending,
    MeasureResult,
    NSearchResult,
    ParameterCount,
    ParameterGroup,
    Provenance,
    SearchQuality,
    SweepCurve,
    SweepPoint,
    SweepResult,
    TrialRecord,
)
from capacity_service.specs.sizes import (
    GATE_BLOCKS,
    N_CLASSES,
    POOL_FACTOR,
    largest_search_n,
    most_distinct_inputs,
    parameter_total,
)
from capacity_service.specs.training import RetrainSpec, TrainSpec

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "DEFAULT_PATIENCE",
    "DEFAULT_PRECISIONS",
    "DEVICE_PATTERN",
    "GATE_BLOCKS",
    "MAX_BITS",
    "MODEL_KINDS",
    "N_CLASSES",
    "POOL_FACTOR",
    "CNNSpec",
    "CapacityResult",
    "CapacitySpec",
    "CurvePoint",
    "Device",
    "Ending",
    "FCDNNSpec",
    "Frozen",
    "Int",
    "MeasureResult",
    "MeasureSpec",
    "ModelSpec",
    "NSearchResult",
    "ParameterCount",
    "ParameterGroup",
    "Progress",
    "ProgressValue",
    "Provenance",
    "RNNSpec",
    "Real",
    "RetrainSpec",
    "SearchQuality",
    "SearchSpec",
    "SweepCurve",
    "SweepPoint",
    "SweepResult",
    "SweepSpec",
    "TrainSpec",
    "TrialRecord",
    "check_n_fits",
    "check_sample_count",
    "largest_search_n",
    "most_distinct_inputs",
    "parameter_total",
]
