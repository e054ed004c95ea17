from __future__ import annotations

import pytest
import torch

from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.engine import (
    StackedModel,
    TrialConfig,
    cnn,
    native,
    recurrent,
    stack_models,
    train_trials,
)
from capacity_service.science.engine.memory import (
    activation_floats,
    check_fits,
    default_k,
    training_bytes,
)
from capacity_service.science.engine.recurrent import StackedRNN
from capacity_service.science.engine.stacked import EVAL_FLOATS, Batch, output_gradient
from capacity_service.science.models import build_model
from capacity_service.science.train import train_memorization
from capacity_service.specs import CNNSpec, FCDNNSpec, RNNSpec, TrainSpec

SPEC = FCDNNSpec(width=12, depth=2, n_in=14)
# one small model of every kind (and CNN variants: 5x5 kernels, pools spread over more
# layers, a hidden FC layer)
EVERY_KIND = [
    SPEC,
    CNNSpec(kernel=3, conv_layers=3, channels=2, input_size=8),
    CNNSpec(kernel=5, conv_layers=4, channels=2, input_size=8, fc_hidden=5),
    RNNSpec(kind="lstm", hidden=6, n_in=5, steps=3),
    RNNSpec(kind="gru", hidden=6, n_in=5, steps=3),
    RNNSpec(kind="rnn", hidden=6, n_in=5, steps=3),
]


def _config(
    n: int, lr: float, momentum: float, batch: int, seed: int, epochs: int = 25, patience: int = 4
) -> TrialConfig:
    train = TrainSpec(lr=lr, momentum=momentum, batch_size=batch, epochs=epochs,
                      patience=patience, lr_decay=0.5, max_decays=2)  # fmt: skip
    return TrialConfig(n=n, train=train, init_seed=seed, shuffle_seed=seed + 1000)


@pytest.mark.parametrize("spec", EVERY_KIND, ids=lambda spec: repr(spec))
def test_batched_trials_match_the_sequential_trainer(spec: FCDNNSpec | CNNSpec | RNNSpec) -> None:
    pool = make_dataset(spec, 300, seed=3)
    configs = [
        _config(300, 0.05, 0.9, 32, 1, epochs=12, patience=3),
        _config(160, 0.1, 0.8, 64, 2, epochs=12, patience=3),
        _config(250, 0.02, 0.95, 16, 3, epochs=12, patience=3),
        _config(60, 0.05, 0.9, 128, 4, epochs=12, patience=3),
    ]
    run = train_trials(spec, pool, configs)
    assert run.engine == "batched"
    for config, outcome in zip(configs, run.outcomes, strict=True):
        assert outcome is not None
        data = Dataset(x=pool.x[: config.n], y=pool.y[: config.n])
        model = build_model(spec, config.init_seed)
        alone = train_memorization(model, data, config.train, config.shuffle_seed)
        # pinned tolerance: float reassociation in batched products may flip a sample
        assert outcome.accuracy == pytest.approx(alone.accuracy, abs=2 / config.n)
        assert abs(outcome.epochs - alone.epochs) <= 1
        assert outcome.final_lr == pytest.approx(alone.final_lr)


def test_the_fcdnn_keeps_parity_over_a_longer_schedule() -> None:
    pool = make_dataset(SPEC, 500, seed=3)
    configs = [
        _config(500, 0.02, 0.9, 32, 1),
        _config(260, 0.05, 0.8, 64, 2),
        _config(410, 0.01, 0.95, 16, 3),
        _config(90, 0.03, 0.9, 128, 4),
    ]
    run = train_trials(SPEC, pool, configs)
    for config, outcome in zip(configs, run.outcomes, strict=True):
        assert outcome is not None
        data = Dataset(x=pool.x[: config.n], y=pool.y[: config.n])
        alone = train_memorization(build_model(SPEC, config.init_seed), data, config.train,
                                   config.shuffle_seed)  # fmt: skip
        assert outcome.accuracy == pytest.approx(alone.accuracy, abs=2 / config.n)
        assert abs(outcome.epochs - alone.epochs) <= 1
        assert outcome.final_lr == pytest.approx(alone.final_lr)


def test_finished_trials_stop_and_others_go_on() -> None:
    pool = make_dataset(SPEC, 400, seed=0)
    easy = _config(8, 0.05, 0.9, 8, 1, epochs=200)  # memorizes 8 samples in a few epochs
    hard = _config(400, 0.01, 0.9, 32, 2, epochs=30, patience=100)
    run = train_trials(SPEC, pool, [easy, hard])
    done_easy, done_hard = run.outcomes
    assert done_easy is not None and done_hard is not None
    assert done_easy.accuracy == 1.0 and done_easy.epochs < 30
    assert done_hard.epochs == 30


@pytest.mark.parametrize("spec", EVERY_KIND, ids=lambda spec: repr(spec))
def test_a_diverging_trial_leaves_the_others_as_if_alone(
    spec: FCDNNSpec | CNNSpec | RNNSpec,
) -> None:
    pool = make_dataset(spec, 200, seed=0)
    calm = _config(200, 0.05, 0.9, 32, 2, epochs=6)
    wild, beside = train_trials(spec, pool, [_config(200, 1e20, 0.9, 32, 1), calm]).outcomes
    alone = train_trials(spec, pool, [calm]).outcomes[0]
    assert wild is not None and beside is not None and alone is not None
    # saturating models (dead ReLUs, saturated gates) stay finite at any rate; these
    # overflow, and are flagged
    if isinstance(spec, FCDNNSpec) or (isinstance(spec, CNNSpec) and spec.fc_hidden):
        assert wild.diverged and wild.epochs == 1
    assert not beside.diverged
    assert beside.accuracy == pytest.approx(alone.accuracy, abs=2 / 200)
    assert beside.epochs == alone.epochs


def test_n_beyond_the_pool_is_refused() -> None:
    pool = make_dataset(SPEC, 50, seed=0)
    with pytest.raises(ValueError, match="exceeds the data pool"):
        train_trials(SPEC, pool, [_config(51, 0.02, 0.9, 8, 1)])


@pytest.mark.parametrize("spec", EVERY_KIND[:2] + EVERY_KIND[3:4], ids=lambda spec: repr(spec))
def test_a_stop_abandons_unfinished_trials_instead_of_reporting_them(
    spec: FCDNNSpec | CNNSpec | RNNSpec,
) -> None:
    pool = make_dataset(spec, 400, seed=0)
    quick = _config(8, 0.05, 0.9, 8, 1, epochs=3, patience=1000)  # ends after 3 epochs
    slow = _config(400, 0.01, 0.9, 32, 2, epochs=500, patience=1000)
    heard: list[int] = []
    run = train_trials(spec, pool, [quick, slow], should_stop=lambda: bool(heard),
                       on_outcome=lambda position, _outcome: heard.append(position))  # fmt: skip
    assert heard == [0]
    assert run.outcomes[0] is not None and run.outcomes[1] is None


@pytest.mark.parametrize("spec", EVERY_KIND[:2] + EVERY_KIND[3:4], ids=lambda spec: repr(spec))
def test_trials_end_at_the_deadline_with_what_they_reached(
    spec: FCDNNSpec | CNNSpec | RNNSpec,
) -> None:
    pool = make_dataset(spec, 30, seed=0)
    slow = _config(30, 1e-6, 0.0, 8, 1, epochs=1000, patience=1000)
    # A deadline already past: every trial ends at its first epoch end
    run = train_trials(spec, pool, [slow, slow], deadline=0.0)
    for outcome in run.outcomes:
        assert outcome is not None and outcome.epochs == 1 and not outcome.diverged


def test_the_memory_estimate_by_hand() -> None:
    spec = FCDNNSpec(width=4, depth=1, n_in=3)  # 3*4 + 4 + 4*2 + 2 = 26 parameters
    assert activation_floats(spec) == 3 * (4 + 3 + 2)
    # per row: 27 floats x batch 10 + 3 x 26 floats + 100 int64; the pool: 100 x (3 + 2)
    per_row = 27 * 10 * 4 + 3 * 26 * 4 + 100 * 8
    assert training_bytes(spec, 2, 10, 100) == 2 * per_row + 100 * (3 * 4 + 8)


def test_k_trials_that_cannot_fit_are_refused_naming_the_field() -> None:
    spec = RNNSpec(kind="lstm", hidden=32)
    with pytest.raises(ValueError, match=r"search\.batch: K = 100000 trials .* GiB on cpu"):
        check_fits(spec, 100_000, 128, 2**20, torch.device("cpu"))
    check_fits(spec, 32, 128, 2**15, torch.device("cpu"))  # the thesis's LSTM search fits
    assert default_k(torch.device("cpu")) == 8 and default_k(torch.device("cuda")) == 256


# how a CPU runs a recurrent stack: a row at a time in C (recurrent_rows.c, where torch's
# BLAS is found), step by step with the cells' math in C, or in torch ops (as on a GPU)
RECURRENT_PATHS = ("rows", "cells", "torch")


def _stack_on_path(
    spec: RNNSpec, configs: list[TrialConfig], pool: Dataset, path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> StackedModel:  # fmt: skip
    monkeypatch.setenv("CAPACITY_NATIVE_KERNELS", "0" if path == "torch" else "1")
    stack = stack_models(spec, configs, pool)
    assert isinstance(stack, StackedRNN)
    if path == "cells":
        stack.row_kernels = None
    elif path == "rows" and stack.row_kernels is None:
        pytest.skip("the per-row C kernels need a C compiler and torch's BLAS sgemm")
    return stack


@pytest.mark.parametrize("path", RECURRENT_PATHS)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_the_hand_written_recurrent_step_is_autograds(
    kind: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RNNSpec(kind=kind, hidden=6, n_in=5, steps=3)
    pool = make_dataset(spec, 48, seed=0)
    configs = [_config(48, 0.1, 0.9, 16, seed) for seed in range(3)]
    hand = _stack_on_path(spec, configs, pool, path, monkeypatch)
    reference = stack_models(spec, configs, pool)
    generator = torch.Generator().manual_seed(0)
    for tensor in hand.params:  # non-zero biases, so every term of the backward counts
        tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator))
    reference.params = [tensor.clone() for tensor in hand.params]
    x, y = pool.x.view(3, 16, 3, 5), pool.y.view(3, 16)
    weight = torch.full((3, 16), 1 / 16)
    weight[1, 10:], weight[1, :10] = 0.0, 0.1  # a partial batch
    neg_lr, momentum = torch.tensor([-0.1, -0.2, -0.05]), torch.tensor([0.9, 0.5, 0.0])
    for _ in range(3):
        hand.step(Batch(x, y, weight), neg_lr, momentum)
        StackedModel.step(reference, Batch(x, y, weight), neg_lr, momentum)  # autograd
    for mine, theirs in zip(hand.params, reference.params, strict=True):
        torch.testing.assert_close(mine, theirs.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("path", RECURRENT_PATHS)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_the_recurrent_accuracy_pass_in_chunks_is_the_autograd_forward(
    kind: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RNNSpec(kind=kind, hidden=6, n_in=5, steps=3)
    pool = make_dataset(spec, 40, seed=0)
    configs = [_config(40, 0.1, 0.9, 16, seed) for seed in range(3)]
    stack = _stack_on_path(spec, configs, pool, path, monkeypatch)
    generator = torch.Generator().manual_seed(0)
    for tensor in stack.params:  # non-zero biases, so every term counts
        tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator))
    params, x = stack.rows(torch.arange(3)), pool.x.view(40, 3, 5)
    reference = stack.forward(x.unsqueeze(0).expand(3, *x.shape), params)
    with torch.no_grad():
        chunks = [stack.evaluate(x[start : start + 16], params) for start in range(0, 40, 16)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), reference.detach())
    # a CPU's chunks: cache-sized for the step-by-step pass; the C rows block them inside
    expected = EVAL_FLOATS // (2 * 8) if path == "rows" else recurrent.CPU_EVAL_SAMPLES // 8
    assert stack.eval_chunk(8) == expected


def test_a_cnn_step_in_chunks_of_rows_is_the_whole_stacks_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 6 rows at batch 128: chunks of 4 and 2 rows on a CPU without the C kernel
    # (cnn.CPU_STEP_SAMPLES = 512)
    monkeypatch.setenv("CAPACITY_NATIVE_KERNELS", "0")
    spec = CNNSpec(kernel=3, conv_layers=3, channels=2, input_size=8)
    rows, size = 6, 128
    assert cnn.CPU_STEP_SAMPLES // size == 4
    pool = make_dataset(spec, rows * size, seed=0)
    configs = [_config(rows * size, 0.1, 0.9, size, seed) for seed in range(rows)]
    chunked, whole = stack_models(spec, configs, pool), stack_models(spec, configs, pool)
    x, y = pool.x.view(rows, size, 1, 8, 8), pool.y.view(rows, size)
    weight = torch.full((rows, size), 1 / size)
    weight[5, 100:], weight[5, :100] = 0.0, 0.01  # a partial batch in the last chunk
    neg_lr = torch.tensor([-0.1, -0.2, -0.05, -0.1, -0.3, -0.15])
    momentum = torch.tensor([0.9, 0.5, 0.0, 0.9, 0.8, 0.7])
    for _ in range(3):
        chunked.step(Batch(x, y, weight), neg_lr, momentum)
        StackedModel.step(whole, Batch(x, y, weight), neg_lr, momentum)  # all rows at once
    for mine, theirs in zip(chunked.params, whole.params, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)
    for mine, theirs in zip(chunked.velocity, whole.velocity, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)
    # the accuracy pass too goes a few rows x samples at a time on a CPU
    assert chunked.eval_chunk(rows) == cnn.CPU_EVAL_SAMPLES // rows


def test_a_cnn_steps_in_c_where_that_measured_faster() -> None:
    # 3x3 kernels, and 5x5 up to 6 channels; the accuracy pass runs in C wherever it builds
    assert cnn.c_step_pays(CNNSpec(kernel=3, channels=16))
    assert cnn.c_step_pays(CNNSpec(kernel=5, channels=4))
    assert not cnn.c_step_pays(CNNSpec(kernel=5, channels=8))
    spec = CNNSpec(kernel=5, conv_layers=3, channels=8, input_size=8)
    pool = make_dataset(spec, 16, seed=0)
    stack = stack_models(spec, [_config(16, 0.1, 0.9, 8, 1)], pool)
    assert isinstance(stack, cnn.StackedCNN)
    assert stack.step_kernels is None
    assert stack.kernels is not None or native.kernels() is None


class _Refill:
    """A supervisor that stops trial 0 at its first epoch end and admits `later` one at a
    time into the rows that come free."""

    def __init__(self, later: list[TrialConfig]) -> None:
        self.later, self.judged = list(later), []

    def admit(self, free_rows: int) -> list[TrialConfig]:
        taken, self.later = self.later[:1], self.later[1:]
        return taken

    def keep(self, trial: int, steps: int, accuracy: float) -> bool:
        self.judged.append((trial, steps))
        return trial != 0


@pytest.mark.parametrize("spec", EVERY_KIND[::3], ids=lambda spec: repr(spec))
def test_rows_stopped_at_a_rung_are_refilled_and_refilled_trials_keep_parity(
    spec: FCDNNSpec | CNNSpec | RNNSpec,
) -> None:
    pool = make_dataset(spec, 300, seed=3)
    first = [_config(300, 0.05, 0.9, 32, 1, epochs=6), _config(120, 0.1, 0.8, 16, 2, epochs=6)]
    # a later trial may need a larger N and a larger batch than any already in the stack
    later = [_config(200, 0.05, 0.9, 64, 3, epochs=6), _config(60, 0.02, 0.95, 8, 4, epochs=6)]
    supervisor = _Refill(later)
    run = train_trials(spec, pool, first, supervisor=supervisor, rows=2)
    assert len(run.outcomes) == 4 and all(o is not None for o in run.outcomes)
    stopped = run.outcomes[0]
    assert stopped is not None and stopped.ended == "rung" and stopped.epochs == 1
    assert (0, 10) in supervisor.judged  # judged after its first epoch: 300 / 32 -> 10 steps
    for config, outcome in zip(first[1:] + later, run.outcomes[1:], strict=True):
        assert outcome is not None and outcome.ended == "schedule"
        data = Dataset(x=pool.x[: config.n], y=pool.y[: config.n])
        alone = train_memorization(build_model(spec, config.init_seed), data, config.train,
                                   config.shuffle_seed)  # fmt: skip
        assert outcome.accuracy == pytest.approx(alone.accuracy, abs=2 / config.n)
        assert abs(outcome.epochs - alone.epochs) <= 1


def test_the_deadline_marks_what_it_cut() -> None:
    pool = make_dataset(SPEC, 200, seed=3)
    run = train_trials(SPEC, pool, [_config(200, 0.001, 0.9, 8, 1, epochs=500)], deadline=0.0)
    outcome = run.outcomes[0]
    assert outcome is not None and outcome.ended == "deadline" and outcome.epochs == 1


def test_the_output_gradient_is_the_cross_entropys() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (8 * torch.randn(3, 5, 2, generator=generator)).requires_grad_()
    y = torch.randint(0, 2, (3, 5), generator=generator)
    weight = torch.rand(3, 5, generator=generator)
    each = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    loss = (each * weight.flatten()).sum()
    (expected,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(output_gradient(logits.detach(), y, weight), expected)
