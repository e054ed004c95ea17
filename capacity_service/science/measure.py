"""One measurement: train a model on N random samples and report what it memorized."""

from __future__ import annotations

from capacity_service.science.data import make_dataset
from capacity_service.science.device import resolve_device
from capacity_service.science.metrics import (
    bits_per_parameter,
    conv_bits_per_parameter,
    mutual_information,
)
from capacity_service.science.models import ModelSpecT, build_model, count_parameters
from capacity_service.science.seeds import derive_seed
from capacity_service.science.train import ProgressCallback, train_memorization
from capacity_service.specs import CNNSpec, MeasureResult, MeasureSpec, ParameterCount


def measure(spec: MeasureSpec, on_epoch: ProgressCallback | None = None) -> MeasureResult:
    """Train `spec.model` on `spec.n` random samples; I = N (1 - H2(p)), 0 if diverged."""
    device = resolve_device(spec.device)
    data = make_dataset(spec.model, spec.n, derive_seed(spec.seed, "data"), device)
    model = build_model(spec.model, derive_seed(spec.seed, "init"), device)
    outcome = train_memorization(
        model, data, spec.train, derive_seed(spec.seed, "shuffle"), on_epoch
    )
    counted = count_parameters(spec.model)
    information = 0.0 if outcome.diverged else mutual_information(spec.n, outcome.accuracy)
    return MeasureResult(
        params=counted.total,
        n=spec.n,
        accuracy=outcome.accuracy,
        mutual_information_bits=information,
        bits_per_param=bits_per_parameter(information, counted.total),
        epochs=outcome.epochs,
        wall_seconds=outcome.wall_seconds,
        device=str(device),
        seed=spec.seed,
        diverged=outcome.diverged,
        train=spec.train,
        conv_bits_per_param=conv_bits(spec.model, counted, information),
    )


def conv_bits(model: ModelSpecT, counted: ParameterCount, information: float) -> float | None:
    """A CNN's convolution-only bits per parameter for I bits (None for other kinds)."""
    if not isinstance(model, CNNSpec):
        return None
    return conv_bits_per_parameter(
        information,
        conv_params=counted.count_layers("conv"),
        fc_params=counted.count_layers("dense", "output"),
    )
