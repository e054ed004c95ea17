"""The sequential trainer's step and accuracy pass through the engine's C row kernels.

A recurrent model (LSTM, GRU, tanh RNN) on a CPU where torch's BLAS is found trains as a
stack of one row of `recurrent_rows.c`, the batched engine's kernels: one call gives the
batch's gradient and loss, another the logits. Measured against the module's own forward
(torch.lstm / gru / rnn_tanh) and autograd, N = 4,096, one thread: an epoch 3-5x faster
(LSTM-32 batch 128 27-43 -> 9 ms, batch 32 67 -> 16 ms; GRU-38 36 -> 10 ms; RNN-75
20 -> 8 ms), the accuracy pass 1.3-3x, to the same accuracy after 5 epochs.

The kernels compute with the weights the model's forward would use: a parametrized
weight (a fixed-point precision, `fixed_point`) is read through its parametrization, and
the kernel's gradient goes back through that parametrization's own backward (for
fixed-point weights the straight-through path), as autograd would send it.
"""

from __future__ import annotations

import torch

from capacity_service.science.engine import native
from capacity_service.science.models import RNN


class KernelPath:
    """One recurrent model's loss, gradient and logits in the row kernels."""

    def __init__(self, model: RNN, kernels: native.Kernels) -> None:
        self.model, self.kernels = model, kernels
        self.shape = native.RecurrentShape.of(model.spec)
        cell = "cell.weight_ih", "cell.weight_hh", "cell.bias"
        gru = ("cell.bias_hn",) if model.spec.kind == "gru" else ()
        # the kernels' parameter order (models.RNN's, before any parametrization moves
        # a weight to the end of named_parameters())
        self.names = (*cell, *gru, "output.weight", "output.bias")

    @classmethod
    def find(cls, model: torch.nn.Module, device: torch.device) -> KernelPath | None:
        """The path for `model` on `device`, or None where the model trains through its
        own forward: not a recurrent model, not on a CPU, the kernels turned off or not
        built, or no BLAS `sgemm_` found in torch."""
        if not isinstance(model, RNN):
            return None
        kernels = native.kernels_for(device)
        if kernels is None or not kernels.has_blas:
            return None
        return cls(model, kernels)

    def weights(self) -> list[torch.Tensor]:
        """The weights the forward pass computes with, in the kernels' order."""
        found = []
        for name in self.names:
            owner, _, attribute = name.rpartition(".")
            found.append(getattr(self.model.get_submodule(owner), attribute))
        return found

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of the batch x (B, T, n_in), y (B,) as a 0-d tensor,
        its gradient added to the parameters' .grad, as `loss.backward()` would."""
        weights = self.weights()
        batch = y.shape[0]
        loss = torch.empty(1)
        share = torch.full((1, batch), 1.0 / batch)  # the mean's weight of each sample
        stacked = [w.detach().unsqueeze(0) for w in weights]
        flat = self.kernels.recurrent_gradient(self.shape, stacked, x.unsqueeze(0),
                                               y.unsqueeze(0), share, loss)  # fmt: skip
        grads = [g[0] for g in self.shape.split(flat)]
        through: list[tuple[torch.Tensor, torch.Tensor]] = []
        for weight, grad in zip(weights, grads, strict=True):
            if weight.is_leaf:  # the parameter itself
                weight.grad = grad if weight.grad is None else weight.grad + grad
            else:  # computed from a parameter by a parametrization
                through.append((weight, grad))
        if through:
            tensors, grad_tensors = zip(*through, strict=True)
            torch.autograd.backward(tensors, grad_tensors)
        return loss[0]

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, 2) of x (n, T, n_in)."""
        stacked = [w.detach().unsqueeze(0) for w in self.weights()]
        return self.kernels.recurrent_logits(self.shape, stacked, x)[0]
