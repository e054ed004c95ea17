"""Stacked CNNs: the K trials' channels side by side, grouped convolutions (groups = K).

Row r's channels are r*C .. (r+1)*C - 1 of one (B, K*C, S, S) activation, so every
convolution of the stack is one grouped convolution and every pool one pool. The accuracy
pass feeds every row the same images the same way (measured: a first layer of one dense
convolution with K*C outputs over the shared images was 2x slower than the grouped one,
and left the pools in the slow NCHW layout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from capacity_service.science.engine.stacked import StackedModel
from capacity_service.science.models import pool_after
from capacity_service.specs import CNNSpec


class StackedCNN(StackedModel):
    def __init__(self, spec: CNNSpec, models: Sequence[nn.Module]) -> None:
        super().__init__(models)
        self.spec = spec
        self.pools = pool_after(spec.conv_layers)
        self.padding = spec.kernel // 2

    def forward(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        rows, batch = x.shape[:2]
        side = self.spec.input_size
        images = x.reshape(rows, batch, side, side).transpose(0, 1)  # (B, R, S, S)
        return self._layers(images, params, rows)

    def _layers(self, images: torch.Tensor, params: list[torch.Tensor], rows: int) -> torch.Tensor:
        """images (B, R, S, S) -> logits (R, B, 2)."""
        # channels-last: measured about 2x faster than NCHW for these grouped convolutions
        h = images.contiguous(memory_format=torch.channels_last)
        convs = self.spec.conv_layers
        for layer in range(convs):
            weight, bias = params[2 * layer], params[2 * layer + 1]  # (R, C, C_in, k, k), (R, C)
            h = torch.conv2d(h, weight.flatten(0, 1), bias.flatten(), padding=self.padding,
                             groups=rows)  # fmt: skip
            # relu(pool(h)) == pool(relu(h)) exactly (relu is monotonic), on a 4x
            # smaller tensor
            if layer in self.pools:
                h = nn.functional.max_pool2d(h, 2)
            h = torch.relu(h)
        batch = h.shape[0]
        h = h.reshape(batch, rows, -1).transpose(0, 1)  # (R, B, C * (S/8)^2)
        dense = params[2 * convs :]
        for index in range(0, len(dense), 2):
            h = torch.baddbmm(dense[index + 1].unsqueeze(1), h, dense[index].transpose(1, 2))
            if index + 2 < len(dense):
                h = torch.relu(h)
        return h
