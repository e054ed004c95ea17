"""Stacked CNNs: the K trials' channels side by side, grouped convolutions (groups = K).

Row r's channels are r*C .. (r+1)*C - 1 of one (B, K*C, S, S) activation, so every
convolution of the stack is one grouped convolution and every pool one pool. The accuracy
pass feeds every row the same images the same way (measured: a first layer of one dense
convolution with K*C outputs over the shared images was 2x slower than the grouped one,
and left the pools in the slow NCHW layout).

On a CPU, where the C kernels build (native.py, cnn_kernels.c), they take the accuracy
pass and, where that measured faster (`c_step_pays`), the step's gradient: each row's
samples one at a time through direct convolutions, every activation of a sample in the
caches. Measured at 4 channels of 3x3, 2 cores, against the grouped convolutions below in
the same session: a step 59-66K sample-rows/s at K = 32 and K = 4, batch 64 or 128
(grouped: 21.6K / 34.1K at K = 32, batch 64 / 128; 28.2K / 32.3K at K = 4); the accuracy
pass 148K sample-rows/s (grouped: 74K).

Without them (or on a GPU) every convolution of the stack is one grouped convolution.
On a CPU that stack's step and accuracy pass go through its rows a few at a time: a
stacked CNN's activations are large (16 KiB a sample at 4 channels of 32 x 32), and a
step whose rows x batch hold more than the caches runs at memory speed. Measured at
4 channels, batch 128, 2 cores: 13.7-15.4K sample-rows/s a step at K = 32, 22.8-25.8K at
K = 4 (batch 64: 12.5-13.9K at K = 32, 22.0-22.6K at K = 4); the accuracy pass 29-32K
sample-rows/s in chunks of 2,184 (EVAL_FLOATS) and 40-52K in chunks of 1,024. K = 32 at
batch 128 in chunks of 4 rows: 21.0K a step.
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from capacity_service.science.engine import native
from capacity_service.science.engine.stacked import Batch, StackedModel, momentum_update
from capacity_service.specs import CNNSpec

CPU_STEP_SAMPLES = 512  # rows x batch of one CPU step's chunk (K = 4 at batch 128)
CPU_EVAL_SAMPLES = 1024  # rows x samples of one CPU accuracy chunk


def c_step_pays(spec: CNNSpec) -> bool:
    """Whether the C kernel's step beats the grouped convolutions' on a CPU. Measured at
    K = 32, batch 64, 2 cores, sample-rows/s of a step, C against grouped in the same
    session: 3x3 kernels at 4 / 8 / 12 / 16 channels 59-66K / 25.8K / 13.8K / 8.4K against
    21.6K / 22.5K / 8.2-12.5K / 6.7-7.4K; 5x5 at 4 / 6 / 8 channels 35.7K / 19.1K / 15.1K
    against 24.7K / 15.8K / 15.1K (oneDNN's larger grouped convolutions run well). The
    accuracy pass in C was 1.3-2.6x the grouped one in each, so it runs in C wherever the
    kernels build."""
    return spec.kernel == 3 or spec.channels <= 6


class StackedCNN(StackedModel):
    cpu_eval_samples = CPU_EVAL_SAMPLES

    spec: CNNSpec

    @cached_property
    def shape(self) -> native.CNNShape:
        return native.CNNShape.of(self.spec)

    @cached_property
    def step_kernels(self) -> native.Kernels | None:
        """The C kernels for the step, where they pay (`c_step_pays`)."""
        return self.kernels if c_step_pays(self.spec) else None

    def step(self, batch: Batch, neg_lr: torch.Tensor, momentum: torch.Tensor) -> None:
        """The step of every row: by the C kernel where it builds and pays
        (`c_step_pays`); else by autograd, a chunk of rows at a time on a CPU (each row's
        step reads only its own parameters and samples, so chunking changes no result)."""
        rows, size = batch.x.shape[:2]
        if self.step_kernels is not None:
            images = batch.x.reshape(rows, size, -1)
            grads = self.step_kernels.cnn_gradient(self.shape, self.params, images, batch.y,
                                                   batch.weight)  # fmt: skip
            momentum_update(self.params, self.velocity, self.shape.split(grads), neg_lr,
                            momentum)  # fmt: skip
            return
        chunk = max(1, CPU_STEP_SAMPLES // size) if self._on_cpu() else rows
        for start in range(0, rows, chunk):
            part = slice(start, start + chunk)
            self.autograd_step(
                [p[part] for p in self.params], [v[part] for v in self.velocity],
                Batch(batch.x[part], batch.y[part], batch.weight[part]),
                neg_lr[part], momentum[part],
            )  # fmt: skip

    @property
    def logits_in_c(self) -> bool:
        return self.kernels is not None

    def evaluate(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        if self.kernels is not None:
            return self.kernels.cnn_logits(self.shape, params, x.reshape(x.shape[0], -1))
        return super().evaluate(x, params)

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
            h = torch.conv2d(h, weight.flatten(0, 1), bias.flatten(), padding=self.spec.kernel // 2,
                             groups=rows)  # fmt: skip
            # relu(pool(h)) == pool(relu(h)) exactly (relu is monotonic), on a 4x
            # smaller tensor
            if layer in self.shape.pools:
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
