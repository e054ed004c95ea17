from __future__ import annotations

import pytest
import torch

from capacity_service.science import code_search
from capacity_service.science.code_search import search_codes
from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.fixed_point import (
    apply_precision,
    current_steps,
    float_weight,
    freeze_share,
)
from capacity_service.science.models import FCDNN, build_model
from capacity_service.science.quantize import max_code, quantize, quantize_codes
from capacity_service.science.sweep import sweep
from capacity_service.science.train import accuracy, train_memorization
from capacity_service.specs import CNNSpec, FCDNNSpec, RetrainSpec, SweepSpec


@pytest.fixture(params=["one chunk", "row by row"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU scores the samples in chunks of rows (`CPU_CHUNK_ELEMENTS`): each test
    runs with the default (one chunk here) and with chunks of a single row."""
    if request.param == "row by row":
        monkeypatch.setattr(code_search, "CPU_CHUNK_ELEMENTS", 1)


def _one_unit_network() -> tuple[FCDNN, Dataset]:
    """h = relu(c1 x1 + c2 x2) (D = 1, codes 0 to start), class 1 where h > 0.5. By hand:
    samples (1, 0) -> 1, (0, 1) -> 0, (1, 1) -> 1; codes (0, 0) hold only (0, 1); c1 = 1
    holds all three, c2 = 1 only (1, 1), c1 = -1 or c2 = -1 only (0, 1)."""
    model = build_model(FCDNNSpec(width=1, n_in=2), seed=0)
    assert isinstance(model, FCDNN)
    with torch.no_grad():
        model.hidden[0].weight.zero_()  # all zero: Lloyd-Max gives D = 1
        model.hidden[0].bias.zero_()
        model.output.weight.copy_(torch.tensor([[0.0], [1.0]]))
        model.output.bias.copy_(torch.tensor([0.0, -0.5]))
    data = Dataset(x=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), y=torch.tensor([1, 0, 1]))
    return model, data


@pytest.mark.usefixtures("chunking")
def test_the_one_change_that_holds_every_sample_by_hand() -> None:
    model, data = _one_unit_network()
    assert apply_precision(model, 2) == {"hidden.0.weight": 1.0}
    assert accuracy(model, data) == pytest.approx(1 / 3)
    found = search_codes(model, data)
    assert (found.accuracy, found.changes, found.sweeps) == (1.0, 1, 1)
    assert float_weight(model, "hidden.0.weight").tolist() == [[1.0, 0.0]]
    assert model.hidden[0].weight.tolist() == [[1.0, 0.0]]  # what the network computes with


@pytest.mark.usefixtures("chunking")
def test_binary_codes_only_flip_sign_by_hand() -> None:
    """Codes (-1, -1) hold only (0, 1). Flipping c1 holds (1, 0) too (2 of 3); then c2's
    flip keeps 2 of 3 at a lower cross-entropy: margins (0.5, -0.5, 1.5) against (0.5,
    0.5, -0.5), softplus(-m) summing to 1.649 against 1.922. No zero code: binary has none."""
    model, data = _one_unit_network()
    with torch.no_grad():
        model.hidden[0].weight.copy_(torch.tensor([[-1.0, -1.0]]))
    assert apply_precision(model, 1) == {"hidden.0.weight": 1.0}  # D = mean |W|
    found = search_codes(model, data)
    assert (found.accuracy, found.changes, found.sweeps) == (pytest.approx(2 / 3), 2, 2)
    assert float_weight(model, "hidden.0.weight").tolist() == [[1.0, 1.0]]


def test_a_network_holding_every_sample_is_left_alone() -> None:
    model, data = _one_unit_network()
    with torch.no_grad():
        model.hidden[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
    apply_precision(model, 2)
    found = search_codes(model, data)
    assert (found.accuracy, found.changes, found.sweeps) == (1.0, 0, 0)


@pytest.mark.usefixtures("chunking")
def test_search_never_loses_a_sample_and_changes_only_the_last_layer_codes() -> None:
    spec = FCDNNSpec(width=12, depth=2, n_in=10)
    data = make_dataset(spec, 400, seed=3)
    model = build_model(spec, seed=3)
    train_memorization(model, data, RetrainSpec(lr=0.05, epochs=60, patience=60), seed=0)
    apply_precision(model, 3)
    before = accuracy(model, data)
    steps = current_steps(model)
    searched = "hidden.1.parametrizations.weight.original"
    others = {name: p.detach().clone() for name, p in model.named_parameters()
              if name != searched}  # fmt: skip
    assert len(others) == len(list(model.parameters())) - 1
    old_codes = quantize_codes(float_weight(model, "hidden.1.weight"), 3, steps["hidden.1.weight"])
    found = search_codes(model, data, max_sweeps=3)
    assert before < found.accuracy == accuracy(model, data)
    assert found.changes > 0 and 1 <= found.sweeps <= 3
    weight = float_weight(model, "hidden.1.weight")
    codes = quantize_codes(weight, 3, steps["hidden.1.weight"])
    assert torch.equal(weight, quantize(weight, 3, steps["hidden.1.weight"]))  # on the grid
    assert int(codes.abs().max()) <= max_code(3)
    assert 0 < int((codes != old_codes).sum()) <= found.changes  # one step a change
    assert current_steps(model) == steps  # D unchanged
    for name, p in model.named_parameters():
        if name in others:
            assert torch.equal(p, others[name])


def test_search_needs_every_weight_of_the_last_layer_fixed() -> None:
    model, data = _one_unit_network()
    with pytest.raises(ValueError, match="quantized with every weight fixed"):
        search_codes(model, data)  # float
    apply_precision(model, 2)
    freeze_share(model, 0.5)  # incremental retraining half done
    with pytest.raises(ValueError, match="quantized with every weight fixed"):
        search_codes(model, data)


def _spec(model: dict[str, object], code_search: bool) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "model": model,
            "n": 300,
            "bits": [3, 2],
            "train": {"lr": 0.05, "batch_size": 16, "epochs": 150},
            "retrain": {"epochs": 3, "stages": [0.5, 1], "code_search": code_search},
        }
    )


def test_the_sweep_searches_fcdnn_codes_after_retraining_and_says_so() -> None:
    model = {"kind": "fcdnn", "width": 8, "depth": 2, "n_in": 12}
    searched = sweep(_spec(model, True)).curves[0]
    plain = sweep(_spec(model, False)).curves[0]
    assert all(point.code_changes is None for point in plain.points)
    first, plain_first = searched.points[0], plain.points[0]  # same network up to here
    assert first.accuracy_quantized == plain_first.accuracy_quantized
    assert plain_first.accuracy_retrained < 1.0
    assert first.code_changes is not None and first.code_changes > 0
    assert first.accuracy_retrained > plain_first.accuracy_retrained


def test_other_kinds_are_not_searched() -> None:
    spec = _spec(CNNSpec(channels=2, input_size=8).model_dump(), True)
    assert all(point.code_changes is None for point in sweep(spec).curves[0].points)
