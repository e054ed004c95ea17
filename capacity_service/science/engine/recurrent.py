"""Stacked LSTM, GRU and tanh RNN trials: batched matrix products per time step.

The input projection of all steps is one batched product per stack; each step then adds
one batched product with the hidden state. Gate blocks are in PyTorch's order, with the
model's one effective bias per gate (and the GRU's b_hn inside the reset product), the
same cell as `models.RecurrentCell`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from capacity_service.science.engine.stacked import StackedModel
from capacity_service.specs import GATE_BLOCKS, RNNSpec


class StackedRNN(StackedModel):
    def __init__(self, spec: RNNSpec, models: Sequence[nn.Module]) -> None:
        super().__init__(models)
        self.spec = spec
        self.floats_per_sample = 3 * spec.steps * GATE_BLOCKS[spec.kind] * spec.hidden

    def forward(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """x (R or 1, B, T, n_in) -> logits (R, B, 2); a single x row is shared."""
        spec = self.spec
        w_ih, w_hh, bias = params[0], params[1], params[2]
        bias_hn = params[3] if spec.kind == "gru" else None
        w_out, b_out = params[-2], params[-1]
        rows, batch, steps = w_ih.shape[0], x.shape[1], spec.steps
        # (R, B*T, G*H): every step's input term at once (a shared x broadcasts)
        inputs = torch.matmul(x.reshape(x.shape[0], batch * steps, -1), w_ih.transpose(1, 2))
        inputs = (inputs + bias.unsqueeze(1)).view(rows, batch, steps, -1)
        w_hh_t = w_hh.transpose(1, 2)
        hidden = spec.hidden
        h: torch.Tensor | None = None  # the zero state: its products are skipped
        c: torch.Tensor | None = None
        for t in range(steps):
            gates = inputs[:, :, t]
            if spec.kind == "lstm":
                if h is not None:
                    gates = torch.baddbmm(gates, h, w_hh_t)
                sig = torch.sigmoid(gates)
                i, f, o = sig[..., :hidden], sig[..., hidden : 2 * hidden], sig[..., 3 * hidden :]
                g = torch.tanh(gates[..., 2 * hidden : 3 * hidden])
                c = i * g if c is None else torch.addcmul(i * g, f, c)
                h = o * torch.tanh(c)
            elif spec.kind == "gru":
                assert bias_hn is not None
                h_n = bias_hn.unsqueeze(1)
                rz = gates[..., : 2 * hidden]
                if h is not None:
                    recurrent = torch.bmm(h, w_hh_t)
                    rz = rz + recurrent[..., : 2 * hidden]
                    h_n = h_n + recurrent[..., 2 * hidden :]
                rz = torch.sigmoid(rz)
                r, z = rz[..., :hidden], rz[..., hidden:]
                n = torch.tanh(torch.addcmul(gates[..., 2 * hidden :], r, h_n))
                h = n - z * n if h is None else torch.lerp(n, h, z)  # (1 - z) n + z h
            else:
                h = torch.tanh(gates if h is None else torch.baddbmm(gates, h, w_hh_t))
        assert h is not None
        return torch.baddbmm(b_out.unsqueeze(1), h, w_out.transpose(1, 2))

    def evaluate(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        return self.forward(x.unsqueeze(0), params)
