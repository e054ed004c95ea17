"""What one job may ask of a worker: N, parameters, trainings and seconds, against the
configured maxima. A job over a limit is refused before it is stored."""

from __future__ import annotations

from typing import Any

from capacity_service.api.problems import LIMIT_EXCEEDED, FieldProblem, ProblemError
from capacity_service.settings import Settings
from capacity_service.specs import CapacitySpec, SweepSpec, largest_search_n, parameter_total


def check_limits(spec: Any, settings: Settings) -> None:
    """ProblemError (422) naming each limit the job exceeds and the setting that sets it
    (a kind other than capacity and quant_sweep: its model's parameters only)."""
    asked: list[tuple[str, str, float, float]] = []  # (field, setting, value, maximum)
    params = parameter_total(spec.model)
    asked.append(("spec.model", "max_params", params, settings.max_params))
    if isinstance(spec, CapacitySpec):
        # without n_range the search draws up to POOL_FACTOR samples per parameter
        asked.append(("spec.search.n_range", "max_n", largest_search_n(spec), settings.max_n))
        asked.append(("spec.search.budget_trials", "max_trials", spec.search.budget_trials,
                      settings.max_trials))  # fmt: skip
        asked.append(("spec.search.budget_seconds", "max_seconds", spec.search.budget_seconds,
                      settings.max_seconds))  # fmt: skip
    elif isinstance(spec, SweepSpec):
        if spec.capacity_n is not None or spec.n is not None:
            field = "spec.capacity_n" if spec.regime else "spec.n"
            asked.append((field, "max_n", max(spec.sample_counts()), settings.max_n))
        curves = len(spec.sample_counts()) if spec.regime is None else 1
        trainings = curves * (1 + len(spec.bits))  # one float training, one retrain per bits
        asked.append(("spec.n", "max_trials", trainings, settings.max_trials))
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
