"""Stacked FCDNNs: weights (K, out, in), batched matrix products and a hand-written
backward pass (no autograd graph: measured faster than autograd for these tiny layers)."""

from __future__ import annotations

import torch

from capacity_service.science.engine.stacked import Batch, StackedModel, output_gradient


class StackedFCDNN(StackedModel):
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
        shows at the end of the epoch as non-finite logits. Every gradient is taken with
        the old weights, then `update` applies them all."""
        weights, biases = self.params[0::2], self.params[1::2]
        logits, inputs = _forward(batch.x, weights, biases)
        grad = output_gradient(logits, batch.y, batch.weight)  # (K, B, 2)
        grads: list[torch.Tensor] = []  # last layer first: bias, weight, bias, ...
        for layer in range(len(weights) - 1, -1, -1):
            a = inputs[layer]  # (K, B, in)
            grads.append(grad.sum(dim=1))  # (K, out)
            grads.append(torch.bmm(grad.transpose(1, 2), a))  # (K, out, in)
            if layer > 0:  # through the layer and the ReLU below it
                grad = torch.ops.aten.threshold_backward(torch.bmm(grad, weights[layer]), a, 0)
        self.update(grads[::-1], neg_lr, momentum)


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
