"""The sequential trainer through the engine's C kernels (kernel_path.py) against the same
training through the model's own forward and autograd (kernels turned off)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from capacity_service.science.data import make_dataset
from capacity_service.science.fixed_point import (
    apply_precision,
    float_weight,
    quantizable_groups,
)
from capacity_service.science.kernel_path import KernelPath
from capacity_service.science.models import MemorizationModel, build_model
from capacity_service.science.sweep import sweep
from capacity_service.science.train import EpochProgress, accuracy, train_memorization
from capacity_service.specs import (
    CNNSpec,
    FCDNNSpec,
    RNNSpec,
    SweepSpec,
    TrainSpec,
)

CPU = torch.device("cpu")
RNN_SPECS = [RNNSpec(kind=kind, hidden=6, n_in=5, steps=3) for kind in ("lstm", "gru", "rnn")]
SPECS: list[RNNSpec | CNNSpec] = [*RNN_SPECS, CNNSpec(kernel=3, channels=4, input_size=8)]


def _path(model: nn.Module) -> KernelPath:
    path = KernelPath.find(model, CPU)
    if path is None:
        pytest.skip("no C kernels with torch's BLAS here")
    return path


def _model(spec: RNNSpec | CNNSpec) -> MemorizationModel:
    """A model with every parameter non-zero, so every term of the gradient counts."""
    model = build_model(spec, seed=3)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.add_(0.2 * torch.randn(tensor.shape, generator=generator))
    return model


def test_only_a_recurrent_model_on_a_cpu_with_the_kernels_takes_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _path(_model(SPECS[0]))
    _path(_model(SPECS[-1]))
    assert KernelPath.find(build_model(FCDNNSpec(width=4, n_in=8), 0), CPU) is None
    # a CNN whose C step is slower than oneDNN's convolutions (`cnn.c_step_pays`)
    wide = CNNSpec(kernel=5, channels=8, input_size=8)
    assert KernelPath.find(build_model(wide, 0), CPU) is None
    assert KernelPath.find(_model(SPECS[0]), torch.device("meta")) is None  # not a CPU
    monkeypatch.setenv("CAPACITY_NATIVE_KERNELS", "0")
    assert KernelPath.find(_model(SPECS[0]), CPU) is None


@pytest.mark.parametrize("bits", [None, 3])  # float, and a fixed-point precision
@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.kind)
def test_the_paths_loss_and_gradient_are_autograds(
    spec: RNNSpec | CNNSpec, bits: int | None
) -> None:
    data = make_dataset(spec, 40, seed=1)
    x = data.x
    models = _model(spec), _model(spec)
    path = _path(models[0])  # found before the precision is applied: it still holds
    if bits is not None:  # gradients reach the float weights straight through
        for model in models:
            apply_precision(model, bits)
        # 0/1 images through weights on a grid tie in the pools in exact arithmetic, and
        # rounding in another order picks another maximum (measured: the first layer's
        # gradient 10% apart), so the inputs here are not on a grid
        x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    mine = path.backward(x, data.y)
    theirs = nn.functional.cross_entropy(models[1](x), data.y)
    theirs.backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(mine, theirs.detach(), atol=1e-5, rtol=1e-4)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    if bits is not None:  # and the kernels computed with the fixed-point weights
        quantized = quantizable_groups(build_model(spec, 0))[0]  # before parametrization
        owner, _, attribute = quantized.rpartition(".")
        computed = getattr(models[0].get_submodule(owner), attribute)
        assert not torch.equal(computed, float_weight(models[0], quantized))


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.kind)
def test_accuracy_through_the_path_is_the_models(spec: RNNSpec | CNNSpec) -> None:
    data = make_dataset(spec, 300, seed=2)
    model = _model(spec)
    _path(model)
    with torch.no_grad():
        expected = float((model(data.x).argmax(dim=1) == data.y).double().mean())
    assert accuracy(model, data) == pytest.approx(expected, abs=1 / 300)


def _train(
    spec: RNNSpec | CNNSpec, kernels: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[MemorizationModel, list[EpochProgress], float]:
    monkeypatch.setenv("CAPACITY_NATIVE_KERNELS", "1" if kernels else "0")
    data = make_dataset(spec, 100, seed=5)
    model = _model(spec)
    assert (KernelPath.find(model, CPU) is not None) == kernels
    # rates at which these small models learn within the 8 epochs (the best epoch's
    # weights are kept: they must not be the starting ones)
    lr = 0.02 if isinstance(spec, CNNSpec) else 0.2
    train = TrainSpec(lr=lr, momentum=0.9, batch_size=16, epochs=8, patience=100)
    epochs: list[EpochProgress] = []
    outcome = train_memorization(model, data, train, seed=6, on_epoch=epochs.append)
    assert outcome.accuracy > accuracy(_model(spec), data) + 0.05
    return model, epochs, outcome.accuracy


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.kind)
def test_training_through_the_path_is_training_through_the_model(
    spec: RNNSpec | CNNSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    _path(_model(spec))
    fast, fast_epochs, fast_accuracy = _train(spec, True, monkeypatch)
    slow, slow_epochs, slow_accuracy = _train(spec, False, monkeypatch)
    # the same epochs, up to floating-point reassociation (measured: weights at most
    # 5e-7 apart after 8 epochs), which may flip a sample at the decision boundary
    assert len(fast_epochs) == len(slow_epochs) == 8
    for a, b in zip(fast_epochs, slow_epochs, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
        assert a.accuracy == pytest.approx(b.accuracy, abs=1 / 100)
    assert fast_accuracy == pytest.approx(slow_accuracy, abs=1 / 100)
    for a, b in zip(fast.parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-5, rtol=1e-4)


def test_a_diverging_training_through_the_path_ends_as_diverged() -> None:
    spec = SPECS[0]
    data = make_dataset(spec, 200, seed=5)
    model = _model(spec)
    _path(model)
    before = accuracy(model, data)
    outcome = train_memorization(model, data, TrainSpec(lr=1e30, epochs=5), seed=0)
    assert outcome.diverged and outcome.epochs == 1
    assert outcome.accuracy == before  # the starting weights are kept, not NaN ones
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_sweep_retrains_fixed_point_recurrent_weights_through_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _path(_model(SPECS[0]))
    calls = []
    original = KernelPath.backward

    def counted(self: KernelPath, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(hasattr(self.model.cell, "parametrizations"))  # quantized?
        return original(self, x, y)

    monkeypatch.setattr(KernelPath, "backward", counted)
    spec = SweepSpec.model_validate({
        "model": {"kind": "lstm", "hidden": 6, "n_in": 5, "steps": 3}, "n": 150,
        "bits": [6, 3], "train": {"lr": 0.05, "epochs": 30, "batch_size": 16},
        "retrain": {"epochs": 3},
    })  # fmt: skip
    result = sweep(spec)
    assert True in calls and False in calls  # the float training and the retraining
    (curve,) = result.curves
    assert [p.bits for p in curve.points] == [6, 3]
    for point in curve.points:
        assert point.accuracy_retrained >= point.accuracy_quantized  # never ends worse
