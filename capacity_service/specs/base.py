"""The base of every spec and result (Frozen) and the strict field types they share."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _known_device(value: str) -> str:
    if not DEVICE_PATTERN.fullmatch(value):
        raise ValueError("must be one of auto, cpu, cuda, cuda:<index>")
    return value


Device = Annotated[str, AfterValidator(_known_device)]
# JSON's types as given: 8 is an integer, "8", 8.5 and true are not (pydantic's lax mode
# would turn true into 1 and "8" into 8)
Int = Annotated[int, Strict()]
Real = Annotated[float, Strict()]  # an integer is a real number too

# A running job's advisory progress (stage, trials_done, best_bits, ...): flat JSON that
# each job kind fills with its own fields and the store keeps as it was given.
ProgressValue = str | int | float | bool | None
Progress = dict[str, ProgressValue]


class Frozen(BaseModel):
    """Base of every spec and result: immutable, unknown keys are an error, and so are
    NaN and infinity (no budget or bound is infinite, and JSON cannot carry them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
