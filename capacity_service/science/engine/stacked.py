"""K models of one architecture as one: every parameter stacked along a leading row axis.

A kind's module subclasses `StackedModel` and writes its forward pass over stacked
tensors (batched matrix products, grouped convolutions); the step here takes the gradient
of every row's own mean cross-entropy by autograd, once for the whole stack, and applies
each row's SGD-with-momentum update (the sequential trainer's `MomentumSGD`: v = m v + g;
w -= lr v) with its own learning rate and momentum. A kind may override `step` with a
hand-written backward pass where that pays (the FCDNN and the recurrent kinds do, and the
CNN on a CPU where its C kernel builds; elsewhere the CNN's grouped convolutions use
autograd).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from capacity_service.science.engine import native
from capacity_service.science.models import ModelSpecT

# Floats of activations one accuracy pass may hold (128 MiB of float32): the pass over all
# N samples of every row is cut into chunks of samples that fit (measured on LSTM-32, K = 32:
# 32 MiB and 256 MiB chunks were slower).
EVAL_FLOATS = 1 << 25


@dataclass(frozen=True)
class Batch:
    """One step's samples: x (R, B, *input) and y (R, B); `weight` (R, B) is 1 / count on
    each row's samples and 0 on padding, so a row's weighted sum is its mean."""

    x: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor


class StackedModel:
    """Row r of every tensor in `params` is trial r's parameter of the same name."""

    # activations of one sample in one row's pass, in floats (memory.activation_floats):
    # sizes the chunks of the accuracy pass
    floats_per_sample: int = 1

    def __init__(
        self,
        spec: ModelSpecT,
        trials: Sequence[Sequence[torch.Tensor]],
        device: torch.device | str = "cpu",
    ) -> None:
        """Stack each trial's parameters (`models.initial_parameters`, as the sequential
        trainer's model of `spec` starts from them, so row r starts from trial r's exact
        weights) onto `device`."""
        self.spec = spec
        self.params = [torch.stack([t.detach() for t in tensors]).to(device)
                       for tensors in zip(*trials, strict=True)]  # fmt: skip
        self.velocity = [torch.zeros_like(p) for p in self.params]
        # the fused CPU kernels for the stack's device (None on a GPU or where they do not
        # build), for the kinds that have them
        self.kernels = native.kernels_for(self.params[0].device)

    def forward(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """x (R, B, *input) -> logits (R, B, 2), row r with parameters params[.][r]."""
        raise NotImplementedError

    def evaluate(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """The same samples x (B, *input) through every row: logits (R, B, 2). Kinds whose
        first layer can read the shared samples once override this."""
        rows = params[0].shape[0]
        return self.forward(x.unsqueeze(0).expand(rows, *x.shape), params)

    def rows(self, index: torch.Tensor) -> list[torch.Tensor]:
        """The parameters of the rows in `index`, detached (for evaluation)."""
        return [p.detach()[index] for p in self.params]

    def append(self, other: StackedModel) -> None:
        """Add the rows of `other` (the same architecture) after these."""
        self.params = [
            torch.cat([p.detach(), q]) for p, q in zip(self.params, other.params, strict=True)
        ]
        self.velocity = [
            torch.cat(pair) for pair in zip(self.velocity, other.velocity, strict=True)
        ]

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the rows in `index`, in that order (the others' trials ended)."""
        self.params = [p.detach()[index] for p in self.params]
        self.velocity = [v[index] for v in self.velocity]

    # rows x samples of one accuracy chunk on a CPU, where a kind measured that its pass
    # runs faster in cache-sized chunks (None: the float budget alone)
    cpu_eval_samples: int | None = None

    @property
    def logits_in_c(self) -> bool:
        """Whether a C kernel takes the accuracy pass (it keeps only the logits)."""
        return False

    def eval_chunk(self, rows: int) -> int:
        """Samples per chunk of the accuracy pass over `rows` rows: where a C kernel takes
        it, as many as their logits fit EVAL_FLOATS; else as many as their activations
        fit it, and on a CPU at most `cpu_eval_samples` rows x samples."""
        if self.logits_in_c:
            return max(1, EVAL_FLOATS // (2 * rows))
        chunk = max(1, EVAL_FLOATS // (rows * self.floats_per_sample))
        if self.cpu_eval_samples is not None and self._on_cpu():
            chunk = max(1, min(chunk, self.cpu_eval_samples // rows))
        return chunk

    def _on_cpu(self) -> bool:
        """Whether the stack lives on a CPU, whose caches the chunks are sized for."""
        return self.params[0].device.type == "cpu"

    def step(self, batch: Batch, neg_lr: torch.Tensor, momentum: torch.Tensor) -> None:
        """One SGD-with-momentum step of every row on the mean cross-entropy of its own
        batch."""
        self.autograd_step(self.params, self.velocity, batch, neg_lr, momentum)

    def autograd_step(
        self,
        params: list[torch.Tensor],
        velocity: list[torch.Tensor],
        batch: Batch,
        neg_lr: torch.Tensor,
        momentum: torch.Tensor,
    ) -> None:
        """The step of the rows that `params` and `velocity` hold (views into the stack's
        tensors, updated in place), by autograd: rows never mix, so any set of rows can
        take its step alone."""
        leaves = [p.detach().requires_grad_() for p in params]
        logits = self.forward(batch.x, leaves)
        picked = torch.log_softmax(logits, dim=2).gather(2, batch.y.unsqueeze(2)).squeeze(2)
        loss = -(picked * batch.weight).sum()  # row r's part is its own mean loss
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            momentum_update(params, velocity, list(grads), neg_lr, momentum)

    def update(
        self, grads: list[torch.Tensor], neg_lr: torch.Tensor, momentum: torch.Tensor
    ) -> None:
        """v = m v + g; w -= lr v, for every row with its own lr and m."""
        momentum_update(self.params, self.velocity, grads, neg_lr, momentum)


def momentum_update(
    params: list[torch.Tensor],
    velocity: list[torch.Tensor],
    grads: list[torch.Tensor],
    neg_lr: torch.Tensor,
    momentum: torch.Tensor,
) -> None:
    """v = m v + g; w -= lr v in place, row r with its own lr and m."""
    for p, v, g in zip(params, velocity, grads, strict=True):
        shape = (-1,) + (1,) * (p.dim() - 1)
        torch.addcmul(g, v, momentum.view(shape), out=v)
        p.addcmul_(v, neg_lr.view(shape))


def output_gradient(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """d(sum of each row's mean cross-entropy) / d logits = (softmax - onehot) * weight.
    With two classes softmax_1 = sigmoid(l_1 - l_0), so the gradient is (-d, d) with
    d = (sigmoid(l_1 - l_0) - y) * weight: 2-3x faster here than a softmax over a
    dimension of 2 (FCDNN-32, K = 64, batch 32: 61 against 137 us)."""
    first, second = logits.unbind(2)
    d = torch.sigmoid(second - first).sub_(y).mul_(weight)
    return torch.stack([-d, d], dim=2)
