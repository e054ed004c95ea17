from __future__ import annotations

import re

import pytest
import torch

from capacity_service.science import sweep as sweep_module
from capacity_service.science.data import make_dataset
from capacity_service.science.fixed_point import (
    apply_precision,
    clear_precision,
    current_steps,
    float_weight,
    freeze_share,
    levels_used,
    refit_steps,
    thaw,
)
from capacity_service.science.models import MemorizationModel, build_model
from capacity_service.science.quantize import (
    lloyd_max_refine,
    lloyd_max_step,
    quantization_error,
    quantize,
)
from capacity_service.science.schedule import TrainOutcome
from capacity_service.science.seeds import derive_seed
from capacity_service.science.sweep import precision_boundary, retrain_incrementally, sweep
from capacity_service.science.train import accuracy, snapshot, train_memorization
from capacity_service.specs import (
    CNNSpec,
    FCDNNSpec,
    RetrainSpec,
    RNNSpec,
    SweepPoint,
    SweepSpec,
    TrainSpec,
)


@pytest.mark.parametrize(
    "spec",
    [
        FCDNNSpec(width=8, depth=2),
        CNNSpec(channels=2, fc_hidden=4),
        RNNSpec(kind="gru", hidden=6, n_in=5, steps=2),
    ],
)
def test_only_quantizable_groups_change(spec: FCDNNSpec | CNNSpec | RNNSpec) -> None:
    model = build_model(spec, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = {g.name: g for g in model.parameter_groups()}
    steps = apply_precision(model, 2)
    assert set(steps) == {name for name, g in groups.items() if g.quantizable}
    for name, group in groups.items():
        owner_path, _, attribute = name.rpartition(".")
        owner = model.get_submodule(owner_path)
        used = getattr(owner, attribute)  # what the forward pass computes with
        if group.quantizable:
            torch.testing.assert_close(used, quantize(before[name], 2, steps[name]))
            assert torch.unique(used).numel() <= 3
        else:  # biases and the output layer: bit for bit unchanged
            assert torch.equal(used, before[name])
    clear_precision(model)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])  # the float weights are back


def test_retraining_updates_float_weights_and_keeps_the_step() -> None:
    spec = FCDNNSpec(width=8, n_in=10)
    data = make_dataset(spec, 200, seed=0)
    model = build_model(spec, seed=0)
    steps = apply_precision(model, 3)
    float_before = float_weight(model, "hidden.0.weight").detach().clone()
    train_memorization(model, data, RetrainSpec(epochs=3, lr=0.01), seed=0)
    float_after = float_weight(model, "hidden.0.weight")
    assert not torch.equal(float_before, float_after)  # gradients reached the float W
    parametrization = model.hidden[0].parametrizations.weight[0]  # type: ignore[index,union-attr]
    assert parametrization.step == steps["hidden.0.weight"]  # D fixed while retraining
    torch.testing.assert_close(
        model.hidden[0].weight,  # type: ignore[index]
        quantize(float_after.detach(), 3, steps["hidden.0.weight"]),
    )
    assert levels_used(model, 3, steps)["hidden.0.weight"] <= 7


def test_refit_steps_follows_the_float_weights_and_a_snapshot_keeps_the_step() -> None:
    model = build_model(FCDNNSpec(width=8, n_in=10), seed=0)
    steps = apply_precision(model, 3)
    before = snapshot(model)
    with torch.no_grad():
        float_weight(model, "hidden.0.weight").mul_(2)
    refitted = refit_steps(model, search=True)
    # Lloyd-Max scales with the weights: twice the weights, twice the step
    assert refitted["hidden.0.weight"] == pytest.approx(2 * steps["hidden.0.weight"], rel=1e-6)
    assert refitted["hidden.0.weight"] == lloyd_max_step(float_weight(model, "hidden.0.weight"), 3)
    assert current_steps(model) == pytest.approx(refitted)
    torch.testing.assert_close(  # the forward pass computes with the refitted step
        model.hidden[0].weight,  # type: ignore[index]
        quantize(float_weight(model, "hidden.0.weight").detach(), 3, refitted["hidden.0.weight"]),
    )
    model.load_state_dict(before)  # the best weights come back with the step they had
    assert current_steps(model) == pytest.approx(steps)


def test_refit_steps_from_the_current_step_is_a_lloyd_max_fixed_point() -> None:
    model = build_model(FCDNNSpec(width=8, n_in=10), seed=0)
    steps = apply_precision(model, 3)
    with torch.no_grad():  # as one retraining epoch might move the weights
        weight = float_weight(model, "hidden.0.weight")
        weight.add_(0.01 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
    refitted = refit_steps(model)
    weight = float_weight(model, "hidden.0.weight").detach()
    assert refitted["hidden.0.weight"] == lloyd_max_refine(weight, 3, steps["hidden.0.weight"])
    assert quantization_error(weight, 3, refitted["hidden.0.weight"]) <= quantization_error(
        weight, 3, steps["hidden.0.weight"]
    )
    assert current_steps(model) == pytest.approx(refitted)


def test_retraining_from_the_float_weights_quantizes_the_float_model_at_each_precision() -> None:
    spec = SweepSpec.model_validate(
        {
            "model": {"kind": "fcdnn", "width": 16},
            "n": 300,
            "bits": [4, 2],
            "train": {"lr": 0.05, "batch_size": 16, "epochs": 100},
            "retrain": {
                "epochs": 5,
                "start": "float",
                "method": "straight_through",
                "refit_steps": True,
            },
        }
    )
    points = sweep(spec).curves[0].points
    # by hand: the float model as the sweep trains it, quantized straight to 2 bits
    data = make_dataset(spec.model, 300, derive_seed(0, "data"))
    model = build_model(spec.model, derive_seed(0, "init"))
    train_memorization(model, data, spec.train, derive_seed(0, "shuffle"))
    apply_precision(model, 2)
    assert points[1].accuracy_quantized == accuracy(model, data)
    assert all(p.accuracy_retrained >= p.accuracy_quantized for p in points)


def test_eight_bits_keeps_and_retraining_recovers_two_bits() -> None:
    spec = FCDNNSpec(width=16)
    data = make_dataset(spec, 300, seed=0)
    model = build_model(spec, seed=0)
    memorized = train_memorization(model, data, TrainSpec(lr=0.05, batch_size=16, epochs=300), 0)
    assert memorized.accuracy == 1.0
    apply_precision(model, 8)
    assert accuracy(model, data) == 1.0
    apply_precision(model, 2)
    direct = accuracy(model, data)
    retrained = train_memorization(model, data, RetrainSpec(epochs=20), seed=1)
    assert direct < 1.0
    assert retrained.accuracy > direct + 0.03


def test_freeze_share_fixes_the_largest_weights_first_and_never_lets_go() -> None:
    model = build_model(FCDNNSpec(width=8, n_in=10), seed=0)
    steps = apply_precision(model, 3)
    weight = float_weight(model, "hidden.0.weight").detach().clone()
    step = steps["hidden.0.weight"]
    freeze_share(model, 0.5)
    quantizer = model.hidden[0].parametrizations.weight[0]  # type: ignore[index,union-attr]
    largest = weight.abs() > weight.abs().flatten().kthvalue(40).values  # 40 of 80
    assert torch.equal(quantizer.frozen, largest)
    expected = torch.where(largest, quantize(weight, 3, step), weight)
    torch.testing.assert_close(model.hidden[0].weight, expected)  # type: ignore[index]
    # a gradient reaches only the float share
    data = make_dataset(FCDNNSpec(width=8, n_in=10), 100, seed=0)
    torch.nn.functional.cross_entropy(model(data.x), data.y).backward()  # type: ignore[no-untyped-call]
    grad = float_weight(model, "hidden.0.weight").grad
    assert grad is not None and not grad[largest].any() and grad[~largest].any()
    # a larger share keeps the fixed ones, even where a float weight grew past them
    with torch.no_grad():
        float_weight(model, "hidden.0.weight")[~largest] *= 10
    freeze_share(model, 0.75)
    assert torch.equal(quantizer.frozen & largest, largest) and int(quantizer.frozen.sum()) == 60
    freeze_share(model, 1.0)  # all fixed: the fixed-point model, as thaw() computes it
    everything = model.hidden[0].weight.detach().clone()  # type: ignore[index]
    thaw(model)
    torch.testing.assert_close(model.hidden[0].weight, everything)  # type: ignore[index]
    with pytest.raises(ValueError, match="share"):
        freeze_share(model, 1.5)


def test_incremental_retraining_ends_fixed_point_and_never_worse_than_it_began() -> None:
    spec = FCDNNSpec(width=16)
    data = make_dataset(spec, 300, seed=0)
    model = build_model(spec, seed=0)
    train_memorization(model, data, TrainSpec(lr=0.05, batch_size=16, epochs=300), 0)
    apply_precision(model, 2)
    direct = accuracy(model, data)
    retrain = RetrainSpec(epochs=20, stages=(0.5, 0.75, 1.0))
    outcome = retrain_incrementally(model, data, retrain, seed=1, quantized=direct)
    assert outcome.accuracy == accuracy(model, data) > direct + 0.03
    assert 0 < outcome.epochs <= 40  # the two stages before the last
    assert torch.unique(model.hidden[0].weight).numel() <= 3  # type: ignore[index]


def test_incremental_retraining_that_ends_worse_goes_back_to_the_quantized_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = FCDNNSpec(width=16)
    data = make_dataset(spec, 300, seed=0)
    model = build_model(spec, seed=0)
    train_memorization(model, data, TrainSpec(lr=0.05, batch_size=16, epochs=300), 0)
    apply_precision(model, 4)
    start, direct = snapshot(model), accuracy(model, data)

    def wreck(model: MemorizationModel, *args: object, **kwargs: object) -> TrainOutcome:
        """A stage that leaves its float share pointing the wrong way."""
        with torch.no_grad():
            float_weight(model, "hidden.0.weight").neg_()
        return TrainOutcome(accuracy=0.0, epochs=1, diverged=False, wall_seconds=0.0,
                            final_lr=0.002)  # fmt: skip

    monkeypatch.setattr(sweep_module, "train_memorization", wreck)
    outcome = retrain_incrementally(model, data, RetrainSpec(stages=(0.5, 1.0)), 1, direct)
    assert outcome.accuracy == accuracy(model, data) == direct and outcome.epochs == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, start[name]), name


@pytest.mark.parametrize(
    ("stages", "message"),
    [([0.5, 0.75], "must end at 1"), ([0.5, 0.5, 1.0], "must rise"), ([0.0, 1.0], "(0, 1]")],
)
def test_incremental_stages_must_rise_to_one(stages: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RetrainSpec.model_validate({"stages": stages})
    assert RetrainSpec.model_validate({"stages": [0.5, 1]}).stages == (0.5, 1.0)  # JSON's 1


def test_sweep_records_every_precision_in_order() -> None:
    spec = SweepSpec.model_validate(
        {
            "model": {"kind": "fcdnn", "width": 16},
            "n": [150, 300],
            "bits": [8, 4, 2, 1],
            "train": {"lr": 0.05, "batch_size": 16, "epochs": 200},
            "retrain": {"epochs": 5},
        }
    )
    result = sweep(spec)
    assert result.regime == "list" and result.params == 306 and result.quantized_params == 256
    assert [c.n for c in result.curves] == [150, 300]
    for curve in result.curves:
        assert [p.bits for p in curve.points] == [8, 4, 2, 1]
        for point in curve.points:
            assert point.accuracy_retrained >= point.accuracy_quantized
            assert set(point.steps) == {"hidden.0.weight"}
            limit = 2 if point.bits == 1 else 2**point.bits - 1
            assert point.levels_used["hidden.0.weight"] <= limit
        assert curve.precision_boundary in (None, 8, 4, 2, 1)


def test_half_regime_takes_half_the_capacity_n() -> None:
    spec = SweepSpec.model_validate(
        {
            "model": {"kind": "fcdnn", "width": 8},
            "regime": "half",
            "capacity_n": 101,
            "bits": [4],
            "train": {"epochs": 2},
            "retrain": {"epochs": 0},
        }
    )
    result = sweep(spec)
    assert result.regime == "half" and result.curves[0].n == 50
    assert result.curves[0].points[0].retrain_epochs == 0


def _point(bits: int, retrained: float) -> SweepPoint:
    return SweepPoint(
        bits=bits, accuracy_quantized=retrained, accuracy_retrained=retrained,
        mutual_information_quantized_bits=0.0, mutual_information_bits=0.0, retrain_epochs=0,
        retrain_diverged=False, steps={}, levels_used={},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("accuracies", "expected"),
    [
        ({8: 1.0, 6: 0.998, 5: 0.99, 4: 0.9}, 6),  # 5 bits drops 1 point > 0.5
        ({8: 1.0, 6: 1.0, 5: 1.0, 4: 1.0}, 4),
        ({8: 0.98, 6: 1.0}, None),  # the highest precision already fails
        ({8: 1.0, 6: 0.9, 5: 1.0}, 8),  # a later recovery does not count
    ],
)
def test_precision_boundary(accuracies: dict[int, float], expected: int | None) -> None:
    points = [_point(bits, acc) for bits, acc in accuracies.items()]
    assert precision_boundary(1.0, points, 0.005) == expected
