"""What one job may ask of a worker: N, parameters, trainings and seconds, against the
configured maxima. A job over a limit is refused before it is stored."""

from __future__ import annotations

from typing import Any

from capacity_service import jobkinds
from capacity_service.api.problems import LIMIT_EXCEEDED, FieldProblem, ProblemError
from capacity_service.settings import Settings
from capacity_service.specs import parameter_total


def check_limits(kind: str, spec: Any, settings: Settings) -> None:
    """ProblemError (422) naming each limit the job exceeds and the setting that sets it:
    its model's parameters, and what its kind says it asks (`jobkinds.Demand`)."""
    asked = [("spec.model", "max_params", float(parameter_total(spec.model)), settings.max_params)]
    for demand in jobkinds.get(kind).demands(spec):
        maximum = getattr(settings, demand.limit)
        asked.append((demand.field, demand.limit, demand.value, maximum))
    over = [
        FieldProblem(
            field=field,
            message=f"asks for {_quantity(setting, value)}, over the limit of "
            f"{maximum:,.0f} (setting CAPACITY_{setting.upper()}); make the job smaller",
        )
        for field, setting, value, maximum in asked
        if value > maximum
    ]
    if over:
        raise ProblemError(
            422, "Job over a limit", "; ".join(f"{p.field}: {p.message}" for p in over),
            type=LIMIT_EXCEEDED, errors=over,
        )  # fmt: skip


def _quantity(setting: str, value: float) -> str:
    unit = {"max_params": "parameters", "max_n": "samples (N)", "max_trials": "trainings",
            "max_seconds": "seconds"}[setting]  # fmt: skip
    return f"{value:,.0f} {unit}"
