"""Memorization training: SGD with momentum until the training accuracy stops improving.

The loop reports through a callback and never prints or touches a database. The accuracy
it reports is measured over all N samples with the weights exactly as used for inference,
and the weights that reached the best accuracy are the ones the model keeps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from capacity_service.science.data import Dataset
from capacity_service.science.kernel_path import KernelPath
from capacity_service.science.schedule import Schedule, TrainOutcome
from capacity_service.specs import TrainSpec

EVAL_CHUNK = 65536  # samples per forward pass when measuring accuracy


@dataclass(frozen=True, kw_only=True)
class EpochProgress:
    epoch: int
    epochs: int  # the budget
    loss: float
    accuracy: float
    best_accuracy: float
    lr: float


ProgressCallback = Callable[[EpochProgress], None]


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset) -> float:
    """Fraction of the N samples whose label the model predicts."""
    return _accuracy(model, data, KernelPath.find(model, data.x.device))


@torch.no_grad()
def _accuracy(model: nn.Module, data: Dataset, path: KernelPath | None) -> float:
    """`accuracy` through `path`'s kernels where there is one, else the model's forward."""
    forward = model if path is None else path.logits
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.y.device)
    for start in range(0, data.n, EVAL_CHUNK):
        logits = forward(data.x[start : start + EVAL_CHUNK])
        correct += (logits.argmax(dim=1) == data.y[start : start + EVAL_CHUNK]).sum()
    model.train(was_training)
    return int(correct) / data.n


def train_memorization(
    model: nn.Module,
    data: Dataset,
    train: TrainSpec,
    seed: int,
    on_epoch: ProgressCallback | None = None,
    deadline: float | None = None,
) -> TrainOutcome:
    """Train until every sample is memorized, the plateaus run out, or the epochs do.
    At the `deadline` (a time.perf_counter() value) training ends after the current epoch
    with the best accuracy reached, as if the epoch budget had run out.

    The model keeps the weights with the best accuracy seen (the starting ones included).
    The plateau, decay and stop rule is `schedule.Schedule`'s, shared with the batched
    engine. A NaN or infinite loss ends training as diverged. On a CPU a recurrent model,
    or a CNN whose C step pays, trains through the engine's C kernels where they are found
    (`kernel_path`).
    """
    started = time.perf_counter()
    device = data.x.device
    generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = MomentumSGD(list(model.parameters()), lr=train.lr, momentum=train.momentum)
    path = KernelPath.find(model, device)
    # The starting weights count too: retraining a quantized model must not end worse
    # than it began, and one that already memorizes everything needs no epoch.
    schedule = Schedule.start(train, _accuracy(model, data, path))
    best_state = snapshot(model)
    model.train()
    over = schedule.done_before_start
    while not over:
        loss = _train_one_epoch(model, data, optimizer, train.batch_size, generator, path)
        if not math.isfinite(loss):
            schedule.diverge()
            break
        current, lr = _accuracy(model, data, path), schedule.lr
        over = schedule.end_epoch(current)
        if schedule.improved:
            best_state = snapshot(model)
        if on_epoch is not None:
            on_epoch(
                EpochProgress(
                    epoch=schedule.epoch,
                    epochs=train.epochs,
                    loss=loss,
                    accuracy=current,
                    best_accuracy=schedule.best_accuracy,
                    lr=lr,
                )
            )
        over = over or (deadline is not None and time.perf_counter() > deadline)
        optimizer.lr = schedule.lr
    model.load_state_dict(best_state)  # after a divergence too: never keep NaN weights
    return TrainOutcome(
        accuracy=_accuracy(model, data, path),
        epochs=schedule.epoch,
        diverged=schedule.diverged,
        wall_seconds=time.perf_counter() - started,
        final_lr=schedule.lr,
    )


class MomentumSGD:
    """SGD with (PyTorch-style) momentum: v = m v + g; w -= lr v.

    The same update as torch.optim.SGD without its per-step bookkeeping, which costs more
    than the arithmetic for the small models of this task (measured: about 3x faster).
    """

    def __init__(self, params: list[nn.Parameter], lr: float, momentum: float) -> None:
        self.params, self.lr, self.momentum = params, lr, momentum
        self.velocity = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        params: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        velocity: list[torch.Tensor] = []
        for p, v in zip(self.params, self.velocity, strict=True):
            if p.grad is not None:
                params.append(p)
                grads.append(p.grad)
                velocity.append(v)
        torch._foreach_mul_(velocity, self.momentum)
        torch._foreach_add_(velocity, grads)
        torch._foreach_add_(params, velocity, alpha=-self.lr)


def _train_one_epoch(
    model: nn.Module,
    data: Dataset,
    optimizer: MomentumSGD,
    batch_size: int,
    generator: torch.Generator,
    path: KernelPath | None = None,
) -> float:
    """One shuffled pass over the data; returns the mean loss (one host sync per epoch).
    With a `path`, its kernels take each step's loss and gradient."""
    order = torch.randperm(data.n, generator=generator, device=data.x.device)
    x, y = data.x[order], data.y[order]  # one gather per epoch, then contiguous slices
    total = torch.zeros((), device=data.x.device)
    for start in range(0, data.n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        optimizer.zero_grad()
        if path is not None:
            loss = path.backward(xb, yb)
        else:
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += loss.detach() * yb.shape[0]
    return float(total) / data.n


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state (parameters and buffers), to load back later."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
