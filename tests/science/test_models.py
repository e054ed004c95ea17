from __future__ import annotations

import pytest
import torch

from capacity_service.science.models import (
    RNN,
    RecurrentCell,
    build_model,
    count_parameters,
    initial_parameters,
    pool_after,
)
from capacity_service.specs import CNNSpec, FCDNNSpec, RNNSpec, parameter_total


def fcdnn_by_formula(w: int, d: int, n_in: int) -> int:
    # SCIENCE.md 2: n_in*w + w + (d-1)*(w*w + w) + 2*w + 2
    return n_in * w + w + (d - 1) * (w * w + w) + 2 * w + 2


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (FCDNNSpec(width=64, depth=3), 12_610),
        (FCDNNSpec(width=32, depth=1), 1_122),
        (FCDNNSpec(width=128, depth=3), fcdnn_by_formula(128, 3, 128)),
        (FCDNNSpec(width=16, depth=2, n_in=10), fcdnn_by_formula(16, 2, 10)),
        # the thesis's LSTM: 4*(32*32 + 32*32 + 32) + 32*2 + 2
        (RNNSpec(kind="lstm", hidden=32, n_in=32), 8_386),
        # GRU: 3 gates of weights, biases r, z, n plus the candidate's hidden bias b_hn
        (RNNSpec(kind="gru", hidden=32, n_in=32), 3 * (32 * 32 + 32 * 32) + 4 * 32 + 66),
        (RNNSpec(kind="rnn", hidden=32, n_in=32), 32 * 32 + 32 * 32 + 32 + 66),
        # 3x3 kernels, 8 channels, 3 layers on 32x32: conv 9*1*8+8, 2 x (9*8*8+8);
        # pools leave 8 x 4 x 4 = 128 features -> 128*2 + 2
        (CNNSpec(kernel=3, conv_layers=3, channels=8), 80 + 584 + 584 + 258),
        # 5x5, 4 layers, 4 channels, hidden FC of 16: 25*4+4, 3 x (25*16+4), 64*16+16, 16*2+2
        (
            CNNSpec(kernel=5, conv_layers=4, channels=4, fc_hidden=16),
            104 + 3 * 404 + 1_040 + 34,
        ),
    ],
)
def test_parameter_counts_by_hand(spec: FCDNNSpec | CNNSpec | RNNSpec, expected: int) -> None:
    counted = count_parameters(spec)
    assert counted.total == expected
    assert sum(g.count for g in counted.groups) == expected
    built = build_model(spec, seed=0)
    assert sum(p.numel() for p in built.parameters()) == expected
    assert parameter_total(spec) == expected  # the API's torch-free count


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("hidden", "n_in"), [(1, 1), (7, 3), (64, 16)])
def test_torch_free_count_matches_recurrent_models(kind: str, hidden: int, n_in: int) -> None:
    spec = RNNSpec.model_validate({"kind": kind, "hidden": hidden, "n_in": n_in})
    assert parameter_total(spec) == count_parameters(spec).total


@pytest.mark.parametrize("layers", [3, 5, 9])
@pytest.mark.parametrize(("kernel", "fc_hidden"), [(3, 0), (5, 10)])
def test_torch_free_count_matches_cnns(layers: int, kernel: int, fc_hidden: int) -> None:
    spec = CNNSpec.model_validate({"kernel": kernel, "conv_layers": layers, "channels": 3,
                                   "input_size": 16, "fc_hidden": fc_hidden})  # fmt: skip
    assert parameter_total(spec) == count_parameters(spec).total


def test_count_parameters_accepts_json() -> None:
    assert count_parameters({"kind": "lstm", "hidden": 32, "n_in": 32}).total == 8_386


def test_groups_say_what_is_quantizable() -> None:
    groups = {g.name: g for g in count_parameters(FCDNNSpec(width=8, depth=2)).groups}
    assert groups["hidden.0.weight"].quantizable
    assert groups["hidden.1.weight"].quantizable
    assert not groups["hidden.0.bias"].quantizable
    assert not groups["output.weight"].quantizable
    assert groups["output.weight"].layer == "output"
    lstm = {g.name: g for g in count_parameters(RNNSpec()).groups}
    assert lstm["cell.weight_ih"].quantizable and lstm["cell.weight_hh"].quantizable
    assert not lstm["cell.bias"].quantizable
    assert lstm["cell.weight_hh"].shape == (128, 32)
    cnn = count_parameters(CNNSpec(conv_layers=5))
    assert [g.quantizable for g in cnn.groups if g.layer == "conv"] == [True, False] * 5


@pytest.mark.parametrize(
    ("layers", "expected"), [(3, {0, 1, 2}), (4, {0, 2, 3}), (6, {1, 3, 5}), (9, {2, 5, 8})]
)
def test_three_pools_spread_over_the_stack(layers: int, expected: set[int]) -> None:
    assert pool_after(layers) == expected


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (FCDNNSpec(width=16, depth=2), (7, 16)),
        (CNNSpec(kernel=5, conv_layers=9, channels=2), (7, 1, 32, 32)),
        (RNNSpec(kind="lstm", hidden=8, n_in=6, steps=3), (7, 3, 6)),
        (RNNSpec(kind="gru", hidden=8, n_in=6, steps=3), (7, 3, 6)),
        (RNNSpec(kind="rnn", hidden=8, n_in=6, steps=1), (7, 1, 6)),
    ],
)
def test_models_map_inputs_to_two_logits(
    spec: FCDNNSpec | CNNSpec | RNNSpec, shape: tuple[int, ...]
) -> None:
    logits = build_model(spec, seed=1)(torch.rand(shape))
    assert logits.shape == (7, 2)
    assert torch.isfinite(logits).all()


def test_he_initialization_is_seeded_and_scaled() -> None:
    a = build_model(FCDNNSpec(width=256, depth=1), seed=3)
    b = build_model(FCDNNSpec(width=256, depth=1), seed=3)
    c = build_model(FCDNNSpec(width=256, depth=1), seed=4)
    wa, wb, wc = (m.state_dict()["hidden.0.weight"] for m in (a, b, c))
    torch.testing.assert_close(wa, wb)
    assert not torch.equal(wa, wc)
    # He: std = sqrt(2 / fan_in) = sqrt(2 / 256) = 0.0884
    assert float(wa.detach().std()) == pytest.approx((2 / 256) ** 0.5, rel=0.05)
    assert float(a.state_dict()["hidden.0.bias"].abs().sum()) == 0.0


@pytest.mark.parametrize(
    "spec",
    [
        FCDNNSpec(width=12, depth=2, n_in=14),
        CNNSpec(kernel=3, conv_layers=3, channels=2),
        RNNSpec(kind="lstm", hidden=6),
        RNNSpec(kind="gru", hidden=6),
    ],
    ids=repr,
)
def test_a_model_starts_from_its_initial_parameters(
    spec: FCDNNSpec | CNNSpec | RNNSpec,
) -> None:
    # the batched engine stacks initial_parameters without building the model: both
    # start every trial from the same weights
    drawn = initial_parameters(spec, seed=5)
    built = list(build_model(spec, seed=5).parameters())
    assert [tuple(t.shape) for t in drawn] == [tuple(t.shape) for t in built]
    for mine, theirs in zip(drawn, built, strict=True):
        assert torch.equal(mine, theirs.detach())


def test_a_cnn_starts_with_a_zero_output_layer_and_he_convolutions() -> None:
    cnn = build_model(CNNSpec(kernel=3, conv_layers=3, channels=8), seed=3)
    state = cnn.state_dict()
    assert float(state["output.weight"].abs().sum()) == 0.0
    # He on the convolutions: std = sqrt(2 / fan_in), fan_in = 8 channels x 3 x 3 = 72
    assert float(state["convs.1.weight"].std()) == pytest.approx((2 / 72) ** 0.5, rel=0.1)
    # the other kinds keep He output weights: std = sqrt(2 / 32)
    fcdnn = build_model(FCDNNSpec(width=32, depth=1), seed=3)
    assert float(fcdnn.state_dict()["output.weight"].std()) == pytest.approx(0.25, rel=0.3)
    # a zero output layer still trains the convolutions, from the second step on
    x, y = torch.randint(0, 2, (16, 1, 32, 32)).float(), torch.randint(0, 2, (16,))
    before = state["convs.0.weight"].clone()
    optimizer = torch.optim.SGD(cnn.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(cnn(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    assert not torch.equal(cnn.state_dict()["convs.0.weight"], before)


def per_step_reference(cell: RecurrentCell, x: torch.Tensor) -> torch.Tensor:
    """The cell's equations written out step by step: the last hidden state (B, H)."""
    inputs = x @ cell.weight_ih.t() + cell.bias  # (B, T, G*H)
    h = x.new_zeros(x.shape[0], cell.hidden)
    c = x.new_zeros(x.shape[0], cell.hidden)
    for t in range(x.shape[1]):
        recurrent = h @ cell.weight_hh.t()
        if cell.cell == "lstm":
            i, f, g, o = (inputs[:, t] + recurrent).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        elif cell.cell == "gru":
            assert cell.bias_hn is not None
            x_r, x_z, x_n = inputs[:, t].chunk(3, dim=1)
            h_r, h_z, h_n = recurrent.chunk(3, dim=1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * (h_n + cell.bias_hn))
            h = (1 - z) * n + z * h
        else:
            h = torch.tanh(inputs[:, t] + recurrent)
    return h


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_recurrent_cell_matches_per_step_equations(kind: str, training: bool) -> None:
    spec = RNNSpec.model_validate({"kind": kind, "hidden": 9, "n_in": 6, "steps": 4})
    model = build_model(spec, seed=2)
    cell = model.cell
    assert isinstance(cell, RecurrentCell)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # nonzero biases, b_hn included, so every bias term is exercised
        for p in cell.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    cell.train(training)
    x = torch.randint(0, 2, (7, 4, 6), generator=generator).float()
    weights = torch.randn(7, 9, generator=generator)  # a loss that weighs every output

    fused = cell(x)
    fused_grads = torch.autograd.grad((fused * weights).sum(), list(cell.parameters()))
    reference = per_step_reference(cell, x)
    reference_grads = torch.autograd.grad((reference * weights).sum(), list(cell.parameters()))

    assert fused.shape == (7, 9)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-5)
    for (name, _), got, want in zip(
        cell.named_parameters(), fused_grads, reference_grads, strict=True
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=name)
    # the zero hidden-side biases are made per call: no parameter, buffer or state entry
    expected = {"weight_ih", "weight_hh", "bias"} | ({"bias_hn"} if kind == "gru" else set())
    assert {name for name, _ in cell.named_parameters()} == expected
    assert set(cell.state_dict()) == expected
    assert not list(cell.buffers())


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_recurrent_models_run_on_the_meta_device(kind: str) -> None:
    with torch.device("meta"):  # as count_parameters builds them, and through a forward
        model = RNN(RNNSpec.model_validate({"kind": kind, "hidden": 5, "n_in": 3, "steps": 2}))
        logits = model(torch.empty(4, 2, 3))
    assert logits.shape == (4, 2)
    assert logits.device.type == "meta"
