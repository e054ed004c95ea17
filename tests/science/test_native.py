"""The fused CPU kernels of the recurrent and CNN steps (engine/native.py), against torch
ops and autograd."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from capacity_service.science.data import make_dataset
from capacity_service.science.engine import TrialConfig, native, stack_models
from capacity_service.science.engine.cnn import StackedCNN
from capacity_service.science.engine.stacked import Batch
from capacity_service.science.models import CNN, build_model
from capacity_service.specs import CNNSpec, RNNSpec, TrainSpec

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler"
)
ROWS, HIDDEN, BATCH = 3, 5, 7


def _kernels() -> native.Kernels:
    kernels = native.kernels()
    assert kernels is not None, "a machine with a C compiler builds the kernels"
    return kernels


def _torch_forward(
    gates: torch.Tensor, c_prev: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    i, f, g, o = gates.view(ROWS, 4, HIDDEN, BATCH).unbind(1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = i * g if c_prev is None else i * g + f * c_prev
    activated = torch.stack([i, f, g, o], dim=1).view(ROWS, 4 * HIDDEN, BATCH)
    return activated, c, torch.tanh(c), o * torch.tanh(c)


def _gates(scale: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(ROWS, 4 * HIDDEN, BATCH, generator=generator)


@pytest.mark.parametrize("with_state", [False, True])
def test_the_fused_forward_is_torchs_within_a_few_ulp(with_state: bool) -> None:
    # scale 12: inputs well past the approximation's clamp at 8 and its linear part near 0
    gates = _gates(12.0)
    gates[0, 0, :3] = torch.tensor([0.0, 1e-5, -3e-4])
    c_prev = _gates(2.0, seed=1)[:, :HIDDEN].contiguous() if with_state else None
    state = (ROWS, HIDDEN, BATCH)
    c, tanh_c, h = torch.empty(state), torch.empty(state), torch.empty(state)
    expected = _torch_forward(gates, c_prev)
    _kernels().lstm_forward(gates, c_prev, c, tanh_c, h)
    for mine, theirs in zip((gates, c, tanh_c, h), expected, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("with_state", "carry"), [(False, False), (True, False), (True, True)])
def test_the_fused_backward_is_autograds(with_state: bool, carry: bool) -> None:
    gates = _gates(2.0).requires_grad_()
    c_prev = _gates(1.0, seed=1)[:, :HIDDEN].contiguous() if with_state else None
    d_h, d_c_next = _gates(1.0, seed=2)[:, :HIDDEN], _gates(1.0, seed=3)[:, HIDDEN : 2 * HIDDEN]
    activated, c, tanh_c, h = _torch_forward(gates, c_prev)
    loss = (h * d_h).sum() + ((c * d_c_next).sum() if carry else 0)
    (d_gates_expected,) = torch.autograd.grad(loss, gates)

    d_c = d_c_next.contiguous() if carry else torch.full_like(d_h, float("nan"))  # unread
    d_gates = torch.empty_like(gates)
    _kernels().lstm_backward(activated.detach(), tanh_c.detach(), c_prev, d_h.contiguous(), d_c,
                        carry, d_gates)  # fmt: skip
    torch.testing.assert_close(d_gates, d_gates_expected, atol=1e-6, rtol=1e-5)
    f = activated.detach().view(ROWS, 4, HIDDEN, BATCH)[:, 1]
    d_c_t = d_h * h.detach() / tanh_c.detach() * (1 - tanh_c.detach() ** 2)  # d_h o tanh'
    expected_d_c = (d_c_t + (d_c_next if carry else 0)) * f
    torch.testing.assert_close(d_c, expected_d_c, atol=1e-5, rtol=1e-4)


def test_the_fast_tanh_is_torchs_within_a_few_ulp() -> None:
    x = torch.cat([torch.linspace(-20, 20, 40_001), torch.tensor([0.0, 1e-6, -4e-4, 4e-4])])
    expected = torch.tanh(x)
    assert _kernels().tanh_(x) is x
    torch.testing.assert_close(x, expected, atol=3e-7, rtol=1e-6)
    assert torch.isnan(_kernels().tanh_(torch.tensor([float("nan")]))).all()


@pytest.mark.parametrize("with_state", [False, True])
def test_the_fused_gru_forward_is_torchs(with_state: bool) -> None:
    gates = _gates(12.0)[:, : 3 * HIDDEN].contiguous()
    recurrent = _gates(3.0, seed=1)[:, : 3 * HIDDEN].contiguous() if with_state else None
    h_prev = _gates(0.5, seed=2)[:, :HIDDEN].tanh().contiguous() if with_state else None
    bias_hn = torch.randn(ROWS, HIDDEN, generator=torch.Generator().manual_seed(3))
    x_r, x_z, x_n = gates.view(ROWS, 3, HIDDEN, BATCH).unbind(1)
    h_n = bias_hn.unsqueeze(2).expand(ROWS, HIDDEN, BATCH)
    if recurrent is not None:
        rec_r, rec_z, rec_n = recurrent.view(ROWS, 3, HIDDEN, BATCH).unbind(1)
        x_r, x_z, h_n = x_r + rec_r, x_z + rec_z, h_n + rec_n
    r, z = torch.sigmoid(x_r), torch.sigmoid(x_z)
    n = torch.tanh(x_n + r * h_n)
    h = (1 - z) * n + z * (h_prev if h_prev is not None else 0)
    state = (ROWS, HIDDEN, BATCH)
    mine = torch.empty(state), torch.empty(state), torch.empty(state)
    _kernels().gru_forward(gates, recurrent, bias_hn, h_prev, *mine)
    for got, expected in zip(mine, (n, h_n, h), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    activated = gates.view(ROWS, 3, HIDDEN, BATCH)
    torch.testing.assert_close(activated[:, 0], r, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(activated[:, 1], z, atol=1e-6, rtol=1e-6)


def test_a_nan_stays_nan_so_divergence_is_seen() -> None:
    gates = _gates(1.0)
    gates[1, 2 * HIDDEN, 4] = float("nan")  # a g term
    state = (ROWS, HIDDEN, BATCH)
    c, tanh_c, h = torch.empty(state), torch.empty(state), torch.empty(state)
    _kernels().lstm_forward(gates, None, c, tanh_c, h)
    assert torch.isnan(h[1, 0, 4]) and torch.isnan(h).sum() == 1


def test_tensors_the_kernels_cannot_read_are_refused() -> None:
    gates, state = _gates(1.0), torch.empty(ROWS, HIDDEN, BATCH)
    with pytest.raises(ValueError, match="contiguous"):
        _kernels().lstm_forward(gates.transpose(0, 1).contiguous().transpose(0, 1), None,
                                state, state, state)  # fmt: skip
    with pytest.raises(ValueError, match="float32"):
        _kernels().lstm_forward(gates.double(), None, state, state, state)
    with pytest.raises(ValueError, match="shape"):
        _kernels().lstm_forward(gates, None, state[:, :2].contiguous(), state, state)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_a_stacked_step_with_the_kernels_is_the_torch_op_step(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RNNSpec(kind=kind, hidden=HIDDEN, n_in=4, steps=3)
    pool = make_dataset(spec, 32, seed=0)
    train = TrainSpec(lr=0.1, momentum=0.9, batch_size=16, epochs=3, patience=3)
    configs = [TrialConfig(n=32, train=train, init_seed=s, shuffle_seed=s) for s in range(2)]
    fused, plain = stack_models(spec, configs, pool), stack_models(spec, configs, pool)
    generator = torch.Generator().manual_seed(0)
    for tensor in fused.params:  # non-zero biases, so every term counts
        tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator))
    plain.params = [tensor.clone() for tensor in fused.params]
    batch = Batch(pool.x.view(2, 16, 3, 4), pool.y.view(2, 16), torch.full((2, 16), 1 / 16))
    neg_lr, momentum = torch.tensor([-0.1, -0.2]), torch.tensor([0.9, 0.5])
    for _ in range(3):
        fused.step(batch, neg_lr, momentum)
        with monkeypatch.context() as off:
            off.setenv("CAPACITY_NATIVE_KERNELS", "0")
            assert native.kernels() is None
            plain.step(batch, neg_lr, momentum)
    for mine, theirs in zip(fused.params, plain.params, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)


# small CNNs covering each path of cnn_kernels.c: 3x3 and 5x5 kernels, pools spread over 9
# layers, a hidden dense layer, and sides that are not whole vectors (24 -> 12 -> 6 -> 3)
CNN_SPECS = [
    CNNSpec(kernel=3, conv_layers=3, channels=4, input_size=32),
    CNNSpec(kernel=5, conv_layers=4, channels=2, input_size=8, fc_hidden=5),
    CNNSpec(kernel=3, conv_layers=9, channels=3, input_size=16),
    CNNSpec(kernel=5, conv_layers=3, channels=3, input_size=24, fc_hidden=4),
]


def _models(spec: CNNSpec | RNNSpec, rows: int, scale: float = 0.3) -> list[Any]:
    """`rows` sequential models with every parameter non-zero (biases start at zero, a
    CNN's output layer too), so every term of the backward counts."""
    models = [build_model(spec, seed, torch.device("cpu")) for seed in range(rows)]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in models:
            for tensor in model.parameters():
                tensor.add_(scale * torch.randn(tensor.shape, generator=generator))
    return models


def _stacked(spec: CNNSpec, models: list[CNN]) -> StackedCNN:
    return StackedCNN(spec, [list(model.parameters()) for model in models])


def _cnn_batch(spec: CNNSpec, rows: int, batch: int) -> Batch:
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (rows, batch, spec.input_bits), generator=generator).float()
    y = torch.randint(0, 2, (rows, batch), generator=generator)
    weight = torch.full((rows, batch), 1 / batch)
    weight[-1, batch // 2 :], weight[-1, : batch // 2] = 0.0, 1 / (batch // 2)  # a partial batch
    return Batch(x, y, weight)


def _kernel_gradients(spec: CNNSpec, models: list[CNN], batch: Batch) -> list[torch.Tensor]:
    """The C kernel's gradient of the stacked models, one (R, *shape) tensor per parameter."""
    stack = _stacked(spec, models)
    return stack.shape.split(_kernels().cnn_gradient(stack.shape, stack.params, batch.x,
                                                     batch.y, batch.weight))  # fmt: skip


def _autograd_gradients(
    models: list[Any], spec: CNNSpec | RNNSpec, batch: Batch
) -> list[torch.Tensor]:
    """Each sequential model's gradient of its weighted cross-entropy, stacked by row."""
    per_row = []
    for row, model in enumerate(models):
        x = batch.x[row]
        if isinstance(spec, CNNSpec):
            x = x.view(-1, 1, spec.input_size, spec.input_size)
        losses = torch.nn.functional.cross_entropy(model(x), batch.y[row], reduction="none")
        per_row.append(torch.autograd.grad((losses * batch.weight[row]).sum(),
                                           list(model.parameters())))  # fmt: skip
    return [torch.stack(tensors) for tensors in zip(*per_row, strict=True)]


@pytest.mark.parametrize("rows", [1, 3])  # 1: fewer rows than threads, a batch in parts
@pytest.mark.parametrize("spec", CNN_SPECS, ids=repr)
def test_the_cnn_gradient_is_autograds_of_the_sequential_models(spec: CNNSpec, rows: int) -> None:
    models, batch = _models(spec, rows), _cnn_batch(spec, rows, 12)
    grads = _kernel_gradients(spec, models, batch)
    # float32 sums in another order, through up to 9 layers
    for mine, theirs in zip(grads, _autograd_gradients(models, spec, batch), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_ties_in_a_pool_take_torchs_choice() -> None:
    # integer weights on 0/1 images: many pool windows hold their maximum twice, and the
    # gradient goes to the first in row-major order, as torch's max_pool2d sends it
    spec = CNNSpec(kernel=3, conv_layers=3, channels=2, input_size=16)
    models, batch = _models(spec, 2), _cnn_batch(spec, 2, 8)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for model in models:
            for conv in model.convs:
                conv.weight.copy_(torch.randint(-1, 3, conv.weight.shape, generator=generator))
                conv.bias.zero_()
    first = torch.relu(models[0].convs[0](batch.x[0].view(-1, 1, 16, 16)))
    windows = first.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)  # (B, C, 8, 8, 4)
    top = windows.amax(-1, keepdim=True)
    assert ((windows == top).sum(-1) > 1)[top.squeeze(-1) > 0].any(), "the test needs ties"
    grads = _kernel_gradients(spec, models, batch)
    for mine, theirs in zip(grads, _autograd_gradients(models, spec, batch), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", CNN_SPECS, ids=repr)
def test_the_cnn_logits_are_the_sequential_models(spec: CNNSpec) -> None:
    models, batch = _models(spec, 3), _cnn_batch(spec, 3, 10)
    stack = _stacked(spec, models)
    shape = stack.shape
    with torch.no_grad():
        shared = _kernels().cnn_logits(shape, stack.params, batch.x[0])  # every row, one set
        own = _kernels().cnn_logits(shape, stack.params, batch.x)  # each row its own
        for row, model in enumerate(models):  # sums in another order, through 9 layers
            images = batch.x.view(3, -1, 1, spec.input_size, spec.input_size)
            torch.testing.assert_close(shared[row], model(images[0]), atol=5e-5, rtol=1e-4)
            torch.testing.assert_close(own[row], model(images[row]), atol=5e-5, rtol=1e-4)


def test_a_nan_in_one_cnn_reaches_its_logits_only() -> None:
    spec = CNN_SPECS[0]
    models, batch = _models(spec, 3), _cnn_batch(spec, 3, 4)
    stack = _stacked(spec, models)
    shape = stack.shape
    stack.params[2][1, 0, 0, 1, 1] = float("nan")  # row 1's second convolution
    logits = _kernels().cnn_logits(shape, stack.params, batch.x[0])
    assert torch.isnan(logits[1]).all() and torch.isfinite(logits[[0, 2]]).all()
    grads = _kernels().cnn_gradient(shape, stack.params, batch.x, batch.y, batch.weight)
    assert torch.isnan(grads[1]).any() and torch.isfinite(grads[[0, 2]]).all()


def test_tensors_the_cnn_kernel_cannot_read_are_refused() -> None:
    spec = CNN_SPECS[1]
    models, batch = _models(spec, 2), _cnn_batch(spec, 2, 4)
    stack, kernels = _stacked(spec, models), _kernels()
    shape = stack.shape
    with pytest.raises(ValueError, match="parameter tensors"):
        kernels.cnn_gradient(shape, stack.params[:-1], batch.x, batch.y, batch.weight)
    with pytest.raises(ValueError, match="a parameter of shape"):
        kernels.cnn_logits(shape, [stack.params[0][:, :1].contiguous(), *stack.params[1:]],
                           batch.x[0])  # fmt: skip
    with pytest.raises(ValueError, match="int64 labels"):
        kernels.cnn_gradient(shape, stack.params, batch.x, batch.y.int(), batch.weight)
    with pytest.raises(ValueError, match="images"):
        kernels.cnn_gradient(shape, stack.params, batch.x[:, :, :10].contiguous(), batch.y,
                             batch.weight)  # fmt: skip
    with pytest.raises(ValueError, match="images of shape"):
        kernels.cnn_logits(shape, stack.params, batch.x[:1])  # 1 set of images for 2 rows
    with pytest.raises(ValueError, match="1 to 9 layers"):
        native.CNNShape((), 10, 3, 2, 8, 0, frozenset({2, 5, 9}))
    # an empty batch (every row's samples masked out of the step) is a zero gradient
    none = [t[:, :0].contiguous() for t in (batch.x, batch.y, batch.weight)]
    empty = kernels.cnn_gradient(shape, stack.params, *none)
    assert empty.shape == (2, shape.row_params()) and not empty.any()


# one small network of each cell; batches of 130 cross the kernel's blocks of 128 samples
RNN_SPECS = [RNNSpec(kind=kind, hidden=5, n_in=4, steps=3) for kind in ("lstm", "gru", "rnn")]


def _rnn_batch(spec: RNNSpec, rows: int, batch: int) -> Batch:
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (rows, batch, spec.steps, spec.n_in), generator=generator).float()
    y = torch.randint(0, 2, (rows, batch), generator=generator)
    weight = torch.full((rows, batch), 1 / batch)
    weight[-1, batch // 2 :], weight[-1, : batch // 2] = 0.0, 1 / (batch // 2)  # a partial batch
    return Batch(x, y, weight)


def _row_kernels() -> native.Kernels:
    kernels = _kernels()
    if not kernels.has_blas:
        pytest.skip("this torch build exports no BLAS sgemm")
    return kernels


def _stacked_rnn(
    spec: RNNSpec, models: list[Any]
) -> tuple[native.RecurrentShape, list[torch.Tensor]]:
    rows = zip(*(model.parameters() for model in models), strict=True)
    params = [torch.stack(tensors).detach().contiguous() for tensors in rows]
    return native.RecurrentShape.of(spec), params


@pytest.mark.parametrize("rows", [1, 3])  # 1: fewer rows than threads, a batch in parts
@pytest.mark.parametrize("batch", [9, 130])
@pytest.mark.parametrize("spec", RNN_SPECS, ids=lambda spec: spec.kind)
def test_the_recurrent_row_gradient_is_autograds_of_the_sequential_models(
    spec: RNNSpec, batch: int, rows: int
) -> None:
    models, data = _models(spec, rows), _rnn_batch(spec, rows, batch)
    shape, params = _stacked_rnn(spec, models)
    grads = shape.split(_row_kernels().recurrent_gradient(shape, params, data.x, data.y,
                                                          data.weight))  # fmt: skip
    # the sequential cell's exact sigmoid and tanh against the kernel's rational ones
    for mine, theirs in zip(grads, _autograd_gradients(models, spec, data), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rows", [1, 3])  # 1: a batch in parts, their losses summed
@pytest.mark.parametrize("spec", [CNN_SPECS[0], *RNN_SPECS], ids=lambda spec: spec.kind)
def test_each_rows_loss_is_its_weighted_cross_entropy(spec: CNNSpec | RNNSpec, rows: int) -> None:
    models = _models(spec, rows)
    if isinstance(spec, CNNSpec):
        data, gradient = _cnn_batch(spec, rows, 12), _kernels().cnn_gradient
        shape, params = native.CNNShape.of(spec), _stacked(spec, models).params
        inputs = data.x.view(rows, -1, 1, spec.input_size, spec.input_size)
    else:
        data, gradient = _rnn_batch(spec, rows, 130), _row_kernels().recurrent_gradient
        (shape, params), inputs = _stacked_rnn(spec, models), data.x
    loss = torch.full((rows,), float("nan"))  # every row's must be written
    with_loss = gradient(shape, params, data.x, data.y, data.weight, loss)
    assert torch.equal(with_loss, gradient(shape, params, data.x, data.y, data.weight))
    with torch.no_grad():
        expected = torch.stack([
            (nn.functional.cross_entropy(model(x), y, reduction="none") * weight).sum()
            for model, x, y, weight in zip(models, inputs, data.y, data.weight, strict=True)
        ])  # fmt: skip
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)


def test_a_nan_weight_gives_a_nan_loss_and_a_wrong_loss_shape_is_refused() -> None:
    spec = RNN_SPECS[2]
    shape, params = _stacked_rnn(spec, _models(spec, 2))
    data = _rnn_batch(spec, 2, 5)
    params[0][0, 0, 0] = float("nan")  # row 0's W_ih
    loss = torch.zeros(2)
    _row_kernels().recurrent_gradient(shape, params, data.x, data.y, data.weight, loss)
    assert torch.isnan(loss[0]) and torch.isfinite(loss[1])
    with pytest.raises(ValueError, match="loss of shape"):
        _row_kernels().recurrent_gradient(shape, params, data.x, data.y, data.weight,
                                          torch.zeros(3))  # fmt: skip


@pytest.mark.parametrize("spec", RNN_SPECS, ids=lambda spec: spec.kind)
def test_the_recurrent_row_logits_are_the_sequential_models(spec: RNNSpec) -> None:
    models, data = _models(spec, 3), _rnn_batch(spec, 3, 130)
    shape, params = _stacked_rnn(spec, models)
    with torch.no_grad():
        shared = _row_kernels().recurrent_logits(shape, params, data.x[0])  # every row, one set
        own = _row_kernels().recurrent_logits(shape, params, data.x)  # each row its own
        for row, model in enumerate(models):
            torch.testing.assert_close(shared[row], model(data.x[0]), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(own[row], model(data.x[row]), atol=1e-5, rtol=1e-4)


def test_a_nan_in_one_recurrent_row_reaches_its_logits_and_gradient_only() -> None:
    spec = RNN_SPECS[0]
    shape, params = _stacked_rnn(spec, _models(spec, 3))
    data = _rnn_batch(spec, 3, 6)
    params[1][1, 0, 0] = float("nan")  # row 1's W_hh
    logits = _row_kernels().recurrent_logits(shape, params, data.x[0])
    assert torch.isnan(logits[1]).all() and torch.isfinite(logits[[0, 2]]).all()
    grads = _row_kernels().recurrent_gradient(shape, params, data.x, data.y, data.weight)
    assert torch.isnan(grads[1]).any() and torch.isfinite(grads[[0, 2]]).all()


def test_tensors_the_recurrent_row_kernel_cannot_read_are_refused() -> None:
    spec, kernels = RNN_SPECS[1], _row_kernels()
    shape, params = _stacked_rnn(spec, _models(spec, 2))
    data = _rnn_batch(spec, 2, 4)
    with pytest.raises(ValueError, match="parameter tensors"):
        kernels.recurrent_gradient(shape, params[:-1], data.x, data.y, data.weight)
    with pytest.raises(ValueError, match="a parameter of shape"):
        kernels.recurrent_logits(shape, [params[0][:, :1].contiguous(), *params[1:]], data.x[0])
    with pytest.raises(ValueError, match="int64 labels"):
        kernels.recurrent_gradient(shape, params, data.x, data.y.int(), data.weight)
    with pytest.raises(ValueError, match="inputs"):
        kernels.recurrent_gradient(shape, params, data.x[:, :, :2].contiguous(), data.y,
                                   data.weight)  # fmt: skip
    with pytest.raises(ValueError, match="inputs of shape"):
        kernels.recurrent_logits(shape, params, data.x[:1])  # 1 set of inputs for 2 rows
    # an empty batch (every row's samples masked out of the step) is a zero gradient
    none = [t[:, :0].contiguous() for t in (data.x, data.y, data.weight)]
    empty = kernels.recurrent_gradient(shape, params, *none)
    assert empty.shape == (2, shape.row_params()) and not empty.any()


def test_without_a_compiler_the_step_runs_in_torch_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CAPACITY_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level(logging.WARNING):
        assert native.kernels() is None
    assert "no-such-cc" in caplog.text and "need a C compiler" in caplog.text
    assert not list(tmp_path.glob("kernels/*.so"))


def test_without_torchs_blas_a_recurrent_stack_runs_step_by_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPACITY_KERNEL_CACHE", str(tmp_path))  # a fresh load
    monkeypatch.setattr(native, "_blas_sgemm", lambda: None)
    kernels = _kernels()
    assert not kernels.has_blas
    spec = RNN_SPECS[0]
    shape, params = _stacked_rnn(spec, _models(spec, 2))
    with pytest.raises(RuntimeError, match="BLAS sgemm"):
        kernels.recurrent_logits(shape, params, _rnn_batch(spec, 2, 3).x[0])
    pool = make_dataset(spec, 8, seed=0)
    train = TrainSpec(epochs=1, batch_size=4)
    stack = stack_models(spec, [TrialConfig(n=8, train=train, init_seed=0, shuffle_seed=0)],
                         pool)  # fmt: skip
    assert getattr(stack, "row_kernels", "missing") is None


def test_a_build_is_kept_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPACITY_KERNEL_CACHE", str(tmp_path))
    first = native.kernels()
    (library,) = tmp_path.glob("kernels/kernels-*.so")
    built_at = library.stat().st_mtime_ns
    native._load.cache_clear()  # a new process: finds the build instead of compiling
    assert native.kernels() is not None and first is not None
    assert library.stat().st_mtime_ns == built_at
    assert not [p for p in (tmp_path / "kernels").iterdir() if p != library]  # no leftovers


def test_workers_starting_together_share_one_build(tmp_path: Path) -> None:
    # each process compiles into its own scratch directory and renames the result into
    # place; whichever rename lands last, both load a whole library
    env = {**os.environ, "CAPACITY_KERNEL_CACHE": str(tmp_path)}
    code = "from capacity_service.science.engine import native; print(native.kernels() is not None)"
    workers = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    results = [worker.communicate(timeout=300) for worker in workers]
    assert [out.strip() for out, _ in results] == ["True"] * 2, results
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [
        next((tmp_path / "kernels").glob("kernels-*.so")).name
    ]
