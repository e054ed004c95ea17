"""The sequential trainer's step and accuracy pass through the engine's C kernels.

A recurrent model (LSTM, GRU, tanh RNN; where torch's BLAS is found) or a CNN (where the
engine's C step pays, `cnn.c_step_pays`) on a CPU trains as a stack of one row of the
batched engine's kernels (`recurrent_rows.c`, `cnn_kernels.c`): one call gives a batch's
gradient and loss, another the logits. Measured against the model's own forward and
autograd, one thread (two in brackets), an epoch: LSTM-32 (N = 4,096, batch 128) 27-43 ->
9 ms (25-31 -> 7), batch 32 67 -> 16 ms, GRU-38 36 -> 10 ms, RNN-75 20 -> 8 ms; CNN 3x3
of 4 channels (N = 1,024, batch 64) 78 -> 39 ms (50 -> 20), 5x5 103 -> 50 ms; the
accuracy pass 1.3-3x; the same accuracy after 3-5 epochs.

The kernels compute with the weights the model's forward would use: a parametrized
weight (a fixed-point precision, `fixed_point`) is read through its parametrization, and
the kernel's gradient goes back through that parametrization's own backward (for
fixed-point weights the straight-through path), as autograd would send it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from capacity_service.science.engine import native
from capacity_service.science.engine.cnn import c_step_pays
from capacity_service.science.models import CNN, RNN, MemorizationModel, parameter_names

Gradient = Callable[..., torch.Tensor]  # Kernels.recurrent_gradient / cnn_gradient
Logits = Callable[..., torch.Tensor]  # Kernels.recurrent_logits / cnn_logits


class KernelPath:
    """One model's loss, gradient and logits in the engine's C kernels."""

    def __init__(
        self, model: MemorizationModel, shape: native.KernelShape, gradient: Gradient,
        logits: Logits,
    ) -> None:  # fmt: skip
        self.model, self.shape = model, shape
        self._gradient, self._logits = gradient, logits
        # (module, attribute) of each weight in the kernels' order; registering a
        # parametrization changes a module's class, not the module, so these stay valid
        self._places = []
        for name in parameter_names(model.spec):
            owner, _, attribute = name.rpartition(".")
            self._places.append((model.get_submodule(owner), attribute))

    @classmethod
    def find(cls, model: torch.nn.Module, device: torch.device) -> KernelPath | None:
        """The path for `model` on `device`, or None where the model trains through its
        own forward: an FCDNN, not on a CPU, the kernels turned off or not built, a
        recurrent model where torch exports no BLAS `sgemm_`, a CNN where the C step does
        not pay."""
        kernels = native.kernels_for(device)
        if kernels is None:
            return None
        if isinstance(model, RNN) and kernels.has_blas:
            shape: native.KernelShape = native.RecurrentShape.of(model.spec)
            return cls(model, shape, kernels.recurrent_gradient, kernels.recurrent_logits)
        if isinstance(model, CNN) and c_step_pays(model.spec):
            shape = native.CNNShape.of(model.spec)
            return cls(model, shape, kernels.cnn_gradient, kernels.cnn_logits)
        return None

    def weights(self) -> list[torch.Tensor]:
        """The weights the forward pass computes with, in the kernels' order."""
        return [getattr(module, attribute) for module, attribute in self._places]

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of the batch x (B, *input shape), y (B,) as a 0-d
        tensor, its gradient added to the parameters' .grad, as `loss.backward()` would."""
        weights = self.weights()
        batch = y.shape[0]
        loss = torch.empty(1)
        share = torch.full((1, batch), 1.0 / batch)  # the mean's weight of each sample
        stacked = [w.detach().unsqueeze(0) for w in weights]
        samples = x.reshape(1, batch, *self.shape.sample_shape)
        flat = self._gradient(self.shape, stacked, samples, y.unsqueeze(0), share, loss)
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
        """Logits (n, 2) of x (n, *input shape)."""
        stacked = [w.detach().unsqueeze(0) for w in self.weights()]
        return self._logits(self.shape, stacked, x.reshape(x.shape[0], *self.shape.sample_shape))[0]
