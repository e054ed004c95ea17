"""Every kind of job the service runs, in one place.

A kind names its spec model (validated at submission and again before a worker runs
it), its result model, the function that runs it (given a `JobContext`: where it runs,
when to stop, what is stored so far) and the columns its result is listed by. Spec
validation, the CLI's choices, the API's request and response schemas, the worker and
local suite runs are all derived from this registry: a new kind is one `register` call
made before they are built. A kind defined outside this package is loaded by naming its
module in `CAPACITY_PLUGINS` (comma-separated), for the API and the workers alike.

The run functions import the science when called, so the API can import this module
without torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from capacity_service.specs import (
    CapacityResult,
    CapacitySpec,
    ProgressValue,
    SweepPoint,
    SweepResult,
    SweepSpec,
    TrialRecord,
    largest_search_n,
)
from capacity_service.stopping import StopCheck


class JobContext(Protocol):
    """What a running job may ask of whoever runs it (a worker, or this process)."""

    @property
    def device(self) -> str:
        """Where it runs (auto, cpu, cuda[:i])."""
        ...

    @property
    def should_stop(self) -> StopCheck | None:
        """Asked between units of work; True: raise science.stopping.Stopped."""
        ...

    def stored_trials(self) -> Sequence[TrialRecord]:
        """Trials an earlier attempt stored (a resumed job trains none of them again)."""
        ...

    def trial_finished(self, record: TrialRecord) -> None:
        """Store a finished trial the moment it ends."""
        ...

    def progress(self, **fields: ProgressValue) -> None:
        """Advisory progress (stage, trials done, ...); the next call replaces it."""
        ...

    def result_of(self, job_id: int) -> BaseModel:
        """The stored result of another job this one needs (waits or fails for it)."""
        ...


@dataclass(frozen=True)
class Columns:
    """A result's columns in listings and filters."""

    params: int
    capacity_bits: float | None = None
    bits_per_param: float | None = None
    precision_boundary: int | None = None


@dataclass(frozen=True)
class Demand:
    """Something a job asks of a worker, checked against a configured maximum before the
    job is stored: `field` names the part of the spec that asks it."""

    field: str
    limit: Literal["max_n", "max_trials", "max_seconds"]  # the setting that caps it
    value: float


def _no_demands(spec: Any) -> Sequence[Demand]:
    return ()


@dataclass(frozen=True)
class JobKind:
    name: str
    spec: type[BaseModel]  # has a `model` field (its model_kind is `spec.model.kind`)
    result: type[BaseModel]
    run: Callable[[JobContext, Any], BaseModel]  # raises science.stopping.Stopped
    columns: Callable[[Any], Columns]  # of a result
    description: str
    # of a spec, beyond its model's parameters (which the API always checks)
    demands: Callable[[Any], Sequence[Demand]] = _no_demands


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    if kind.name in KINDS and KINDS[kind.name] != kind:
        raise ValueError(f"job kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def get(name: str) -> JobKind:
    """The kind called `name`; ValueError naming the known ones otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r}; use one of {', '.join(KINDS)}") from None


def validate_job_spec(kind: str, spec: dict[str, object]) -> Any:
    """The spec of a job of `kind`; ValueError for an unknown kind, ValidationError for
    a bad spec."""
    return get(kind).spec.model_validate(spec)


def model_kind(spec: Any) -> str:
    return str(spec.model.kind)


# --- the built-in kinds ---------------------------------------------------------------


def run_capacity(context: JobContext, spec: CapacitySpec) -> CapacityResult:
    from capacity_service.science.search import search_capacity

    completed = list(context.stored_trials())
    best = max((r.mutual_information_bits for r in completed), default=0.0)
    progress = _SearchProgress(context, trials_done=len(completed), best_bits=best)
    spec = spec.model_copy(update={"device": context.device})
    return search_capacity(spec, completed, progress.trial, progress.stage, context.should_stop)


@dataclass
class _SearchProgress:
    """A capacity search's progress as the job shows it: stage, trials, best I so far."""

    context: JobContext
    trials_done: int
    best_bits: float
    stage_name: str = "prior"

    def trial(self, record: TrialRecord) -> None:
        self.context.trial_finished(record)
        self.trials_done += 1
        self.best_bits = max(self.best_bits, record.mutual_information_bits)
        self.show()

    def stage(self, name: str) -> None:
        self.stage_name = name
        self.show()

    def show(self) -> None:
        self.context.progress(stage=self.stage_name, trials_done=self.trials_done,
                              best_bits=self.best_bits)  # fmt: skip


def run_sweep(context: JobContext, spec: SweepSpec) -> SweepResult:
    from capacity_service.science.sweep import sweep

    if spec.regime is not None and spec.capacity_n is None:
        source = context.result_of(spec.capacity_job or 0)
        if not isinstance(source, CapacityResult):
            raise ValueError(f"capacity_job {spec.capacity_job} is not a capacity job; "
                             "give the id of one, or capacity_n")  # fmt: skip
        spec = spec.model_copy(update={"capacity_n": source.best.n})

    def on_point(n: int, point: SweepPoint) -> None:
        context.progress(stage="sweep", n=n, bits=point.bits,
                         accuracy_retrained=point.accuracy_retrained)  # fmt: skip

    spec = spec.model_copy(update={"device": context.device})
    return sweep(spec, on_point=on_point, should_stop=context.should_stop)


def capacity_demands(spec: CapacitySpec) -> list[Demand]:
    return [
        # without n_range the search draws up to POOL_FACTOR samples per parameter
        Demand("spec.search.n_range", "max_n", largest_search_n(spec)),
        Demand("spec.search.budget_trials", "max_trials", spec.search.budget_trials),
        Demand("spec.search.budget_seconds", "max_seconds", spec.search.budget_seconds),
    ]


def sweep_demands(spec: SweepSpec) -> list[Demand]:
    demands = []
    if spec.capacity_n is not None or spec.n is not None:
        field = "spec.capacity_n" if spec.regime else "spec.n"
        demands.append(Demand(field, "max_n", max(spec.sample_counts())))
    curves = len(spec.sample_counts()) if spec.regime is None else 1
    trainings = curves * (1 + len(spec.bits))  # one float training, one retrain per bits
    return [*demands, Demand("spec.n", "max_trials", trainings)]


def capacity_columns(result: CapacityResult) -> Columns:
    return Columns(params=result.params, capacity_bits=result.capacity_bits,
                   bits_per_param=result.bits_per_param)  # fmt: skip


def sweep_columns(result: SweepResult) -> Columns:
    return Columns(params=result.params, precision_boundary=result.curves[0].precision_boundary)


register(
    JobKind(
        name="capacity",
        spec=CapacitySpec,
        result=CapacityResult,
        run=run_capacity,
        columns=capacity_columns,
        description="the memorization capacity of a model: the largest I over N and training",
        demands=capacity_demands,
    )
)
register(
    JobKind(
        name="quant_sweep",
        spec=SweepSpec,
        result=SweepResult,
        run=run_sweep,
        columns=sweep_columns,
        description="accuracy after quantization and retraining at falling precisions",
        demands=sweep_demands,
    )
)


def _load_plugins() -> None:
    """Import the modules `CAPACITY_PLUGINS` names (each registers its kinds); one that
    cannot be imported stops the process at start, naming the setting."""
    named = os.environ.get("CAPACITY_PLUGINS", "").split(",")
    for name in filter(None, (n.strip() for n in named)):
        try:
            importlib.import_module(name)
        except Exception as error:
            print(f"capacity: error: CAPACITY_PLUGINS: cannot import {name!r}: "
                  f"{error.__class__.__name__}: {error}", file=sys.stderr)  # fmt: skip
            raise SystemExit(2) from error


_load_plugins()
