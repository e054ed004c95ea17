"""Stacked FCDNNs: weights (K, out, in), batched matrix products and a hand-written
backward pass (no autograd graph: measured faster than autograd for these tiny layers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from capacity_service.science.engine.stacked import Batch, StackedModel


class StackedFCDNN(StackedModel):
    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__(models)
        self._minus_one: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        return _forward(x, params[0::2], params[1::2])[0]

    def evaluate(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        # one dense product with every row's first layer side by side, its bias fused
        weights, biases = params[0::2], params[1::2]
        rows, width = weights[0].shape[:2]
        first = weights[0].reshape(rows * width, -1).t()  # (n_in, R * width)
        h = torch.addmm(biases[0].flatten(), x, first).view(len(x), rows, width).transpose(0, 1)
        if len(weights) == 1:
            return h
        return _forward(h.relu_(), weights[1:], biases[1:])[0]

    def step(self, batch: Batch, neg_lr: torch.Tensor, momentum: torch.Tensor) -> None:
        """The loss itself is never computed: only its gradient is needed, and divergence
        shows at the end of the epoch as non-finite logits."""
        weights, biases = self.params[0::2], self.params[1::2]
        velocity_w, velocity_b = self.velocity[0::2], self.velocity[1::2]
        logits, inputs = _forward(batch.x, weights, biases)
        # d(mean CE)/d logits = (softmax - onehot) / count
        grad = torch.softmax(logits, dim=2)  # (K, B, 2)
        y = batch.y
        if self._minus_one is None or self._minus_one.shape[:2] != y.shape:
            self._minus_one = torch.full((*y.shape, 1), -1.0, device=y.device)
        grad.scatter_add_(2, y.unsqueeze(2), self._minus_one)
        grad.mul_(batch.weight.unsqueeze(2))
        neg_lr, momentum = neg_lr.view(-1, 1, 1), momentum.view(-1, 1, 1)
        for layer in range(len(weights) - 1, -1, -1):
            a = inputs[layer]  # (K, B, in)
            grad_w = torch.bmm(grad.transpose(1, 2), a)  # (K, out, in)
            grad_b = grad.sum(dim=1)  # (K, out)
            if layer > 0:  # through the layer (old weights) and the ReLU below it
                grad = torch.ops.aten.threshold_backward(torch.bmm(grad, weights[layer]), a, 0)
            # v = m v + g; w -= lr v, each one fused pass over memory
            v_w, v_b = velocity_w[layer], velocity_b[layer]
            torch.addcmul(grad_w, v_w, momentum, out=v_w)
            torch.addcmul(grad_b, v_b, momentum.view(-1, 1), out=v_b)
            torch.addcmul(weights[layer], v_w, neg_lr, out=weights[layer])
            torch.addcmul(biases[layer], v_b, neg_lr.view(-1, 1), out=biases[layer])


def _forward(
    x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x (K, B, n_in) -> logits (K, B, 2), and the input of every layer."""
    inputs = [x]
    h = x
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))  # (K, B, out)
        if layer < len(weights) - 1:
            h = h.relu_()
            inputs.append(h)
    return h, inputs
