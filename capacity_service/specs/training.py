"""How one training runs: SGD settings, and those of retraining after quantization."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, field_validator

from capacity_service.specs.base import Frozen, Int, Real


class TrainSpec(Frozen):
    """SGD with momentum; the learning rate decays by `lr_decay` when accuracy plateaus."""

    lr: Real = Field(0.02, gt=0, description="initial learning rate")
    momentum: Real = Field(0.9, ge=0, lt=1, description="SGD momentum, in [0, 1)")
    batch_size: Int = Field(32, ge=1, description="minibatch size")
    epochs: Int = Field(1500, ge=1, description="epoch budget")
    lr_decay: Real = Field(0.3, gt=0, lt=1, description="factor applied on a plateau")
    patience: Int = Field(50, ge=1, description="epochs without a better accuracy = plateau")
    max_decays: Int = Field(4, ge=0, description="plateaus tolerated before training stops")


class RetrainSpec(TrainSpec):
    """Fine-tuning after quantization: a few epochs at a small learning rate (thesis 2.3.3).
    0 epochs measures direct quantization only."""

    lr: Real = Field(0.002, gt=0, description="initial learning rate of retraining")
    epochs: Int = Field(20, ge=0, description="retraining epochs per precision (0: none)")
    patience: Int = Field(5, ge=1, description="epochs without a better accuracy = plateau")
    max_decays: Int = Field(2, ge=0, description="plateaus tolerated before retraining stops")
    start: Literal["previous", "float"] = Field(
        "previous",
        description="each precision retrains from the weights the previous precision's "
        "retraining left (thesis) or from the float-trained weights",
    )
    method: Literal["incremental", "straight_through"] = Field(
        "incremental",
        description="incremental: fix a growing share of each group's weights at their codes "
        "(the largest first) and retrain the rest in float after each share (`stages`), D "
        "fixed; straight_through: retrain every weight quantized, the gradient passed "
        "straight to the float weights (thesis)",
    )
    stages: tuple[Real, ...] = Field(
        (0.5, 0.75, 0.875, 0.9375, 0.97, 0.985, 1.0),
        description="incremental: the share of each group's weights fixed after each "
        "stage, rising to 1; each stage but the last retrains with these settings",
    )
    refit_steps: bool = Field(
        True,
        description="straight_through: re-estimate each group's step D after every "
        "retraining epoch (Lloyd-Max from the current D); false keeps D fixed, as the "
        "thesis does",
    )

    code_search: bool = Field(
        True,
        description="FCDNN: after retraining, change the last hidden layer's integer codes "
        "one step at a time while that holds more samples (science/code_search.py); other "
        "kinds, and retraining with 0 epochs, skip it",
    )
    search_rounds: Int = Field(
        2,
        ge=0,
        description="FCDNN, after the code search, while samples are still missed: rounds "
        "that each retrain the last hidden layer incrementally again (every other layer "
        "fixed at its codes) and search its codes again; the first round that holds no "
        "more samples is undone and ends them. 0: none",
    )
    search_round_lr: Real = Field(
        0.01,
        gt=0,
        description="the learning rate of a search round's retraining (its other settings "
        "are the retraining's)",
    )

    @field_validator("stages")
    @classmethod
    def _rising_to_one(cls, stages: tuple[float, ...]) -> tuple[float, ...]:
        if not stages or stages[-1] != 1.0:
            raise ValueError("must end at 1 (every weight fixed), e.g. [0.5, 0.75, 1]")
        if any(not 0.0 < share <= 1.0 for share in stages):
            raise ValueError("each share must be in (0, 1]")
        if any(b <= a for a, b in itertools.pairwise(stages)):
            raise ValueError("shares must rise from stage to stage")
        return stages
