"""A toy job kind, registered in this one module: the test of the registry loads it into
a real API server and a real worker with CAPACITY_PLUGINS=tests.toy_kind."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from capacity_service import jobkinds
from capacity_service.specs import FCDNNSpec, Provenance


class EchoSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: FCDNNSpec
    message: str = Field(min_length=1, max_length=100)
    repeat: int = Field(1, ge=1, le=10)
    device: str = "auto"


class EchoResult(BaseModel):
    params: int
    text: str
    device: str
    provenance: Provenance | None = None


def run_echo(context: jobkinds.JobContext, spec: EchoSpec) -> EchoResult:
    context.progress(stage="echo")
    return EchoResult(params=spec.model.width, text=spec.message * spec.repeat,
                      device=context.device)  # fmt: skip


def echo_columns(result: Any) -> jobkinds.Columns:
    return jobkinds.Columns(params=result.params)


jobkinds.register(
    jobkinds.JobKind(
        name="echo",
        spec=EchoSpec,
        result=EchoResult,
        run=run_echo,
        columns=echo_columns,
        description="repeats a message (a test of the job kinds registry)",
    )
)
