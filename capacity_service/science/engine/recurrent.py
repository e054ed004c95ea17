"""Stacked LSTM, GRU and tanh RNN trials: batched matrix products per time step.

The input projection of all steps is one batched product per stack; each step then adds
one batched product with the hidden state. Gate blocks are in PyTorch's order, with the
model's one effective bias per gate (and the GRU's b_hn inside the reset product), the
same cell as `models.RecurrentCell`. Training steps run a hand-written backward pass
through time, with the activations computed in place (a test pins it to autograd's
gradients); `forward` (autograd) and `evaluate` (the accuracy pass) share `_steps`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from capacity_service.science.engine.stacked import Batch, StackedModel, output_gradient
from capacity_service.specs import RNNSpec


class StackedRNN(StackedModel):
    def __init__(self, spec: RNNSpec, models: Sequence[nn.Module]) -> None:
        super().__init__(models)
        self.spec = spec

    def forward(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """x (R, B, T, n_in) -> logits (R, B, 2)."""
        w_ih, bias = params[0], params[2]
        rows, batch, steps = x.shape[:3]
        # every step's input term in one product, its bias fused: (R, B*T, G*H)
        inputs = torch.baddbmm(bias.unsqueeze(1), x.reshape(rows, batch * steps, -1),
                               w_ih.transpose(1, 2))  # fmt: skip
        # unbind, not indexing: its backward is one stack, not a zero fill per step
        return self._steps(inputs.view(rows, batch, steps, -1).unbind(2), params)

    def evaluate(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """Shared samples: every row's input term of every step is one dense product."""
        w_ih, bias = params[0], params[2]
        rows, features = w_ih.shape[0], w_ih.shape[1]
        batch, steps, n_in = x.shape
        weights = w_ih.permute(2, 0, 1).reshape(n_in, rows * features)
        inputs = torch.addmm(bias.flatten(), x.reshape(batch * steps, n_in), weights)
        per_step = inputs.view(batch, steps, rows, features).permute(1, 2, 0, 3)  # (T, R, B, GH)
        return self._steps(per_step.unbind(0), params)

    def _steps(self, inputs: Sequence[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
        """Each step's input term (R, B, G*H) -> logits (R, B, 2)."""
        kind = self.spec.kind
        w_hh_t = params[1].transpose(1, 2)
        bias_hn = params[3] if kind == "gru" else None
        w_out, b_out = params[-2], params[-1]
        tanh = torch.tanh if w_hh_t.is_cuda else _tanh
        h: torch.Tensor | None = None  # the zero state: its products are skipped
        c: torch.Tensor | None = None
        for gates in inputs:
            if kind == "lstm":
                if h is not None:
                    gates = torch.baddbmm(gates, h, w_hh_t)
                # chunks, not slices: their backward is one concatenation, not a zero
                # fill per slice
                i, f, g, o = gates.chunk(4, dim=2)
                i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), tanh(g), torch.sigmoid(o)
                c = i * g if c is None else torch.addcmul(i * g, f, c)
                h = o * tanh(c)
            elif kind == "gru":
                assert bias_hn is not None
                x_r, x_z, x_n = gates.chunk(3, dim=2)
                h_n = bias_hn.unsqueeze(1)
                if h is not None:
                    h_r, h_z, h_hn = torch.bmm(h, w_hh_t).chunk(3, dim=2)
                    x_r, x_z, h_n = x_r + h_r, x_z + h_z, h_n + h_hn
                r, z = torch.sigmoid(x_r), torch.sigmoid(x_z)
                n = tanh(torch.addcmul(x_n, r, h_n))
                h = n - z * n if h is None else torch.lerp(n, h, z)  # (1 - z) n + z h
            else:
                h = tanh(gates if h is None else torch.baddbmm(gates, h, w_hh_t))
        assert h is not None
        return torch.baddbmm(b_out.unsqueeze(1), h, w_out.transpose(1, 2))

    @torch.no_grad()
    def step(self, batch: Batch, neg_lr: torch.Tensor, momentum: torch.Tensor) -> None:
        """Forward, hand-written backward through time, and the update, without an
        autograd graph (measured faster than autograd: fewer passes over memory)."""
        kind = self.spec.kind
        params = self.params
        w_ih, bias, w_out, b_out = params[0], params[2], params[-2], params[-1]
        x = batch.x
        rows, size, steps, n_in = x.shape
        # step-major (R, T, B, .): each step's terms are one dense block per row, so the
        # recurrent products accumulate into them in place and nothing is copied
        flat_x = x.transpose(1, 2).reshape(rows, steps * size, n_in)
        pre = torch.baddbmm(bias.unsqueeze(1), flat_x, w_ih.transpose(1, 2))
        pre = pre.view(rows, steps, size, -1)
        cell = {"lstm": _LSTMSteps, "gru": _GRUSteps, "rnn": _TanhSteps}[kind](self, pre)
        h = cell.forward()
        logits = torch.baddbmm(b_out.unsqueeze(1), h, w_out.transpose(1, 2))
        grad = output_gradient(logits, batch.y, batch.weight)
        grad_w_out = torch.bmm(grad.transpose(1, 2), h)
        grad_b_out = grad.sum(dim=1)
        d_pre = cell.backward(torch.bmm(grad, w_out))  # (R, T, B, G*H)
        flat_d = d_pre.view(rows, steps * size, -1)
        grad_w_ih = torch.bmm(flat_d.transpose(1, 2), flat_x)
        grad_bias = flat_d.sum(dim=1)
        grads = [grad_w_ih, cell.grad_w_hh, grad_bias, *cell.extra_grads, grad_w_out, grad_b_out]
        self.update(grads, neg_lr, momentum)


class _Steps:
    """The recurrence of one training step, forward then backward through time, on
    stacked tensors; `pre` (R, T, B, G*H) is every step's input term (overwritten)."""

    def __init__(self, model: StackedRNN, pre: torch.Tensor) -> None:
        self.pre, self.hidden = pre, model.spec.hidden
        self.w_hh = model.params[1]
        self.w_hh_t = self.w_hh.transpose(1, 2)
        self.tanh_ = torch.Tensor.tanh_ if pre.is_cuda else _tanh_
        self.grad_w_hh = torch.zeros_like(self.w_hh)
        self.extra_grads: list[torch.Tensor] = []
        self.h: list[torch.Tensor | None] = [None]  # h_t; h_0 is the zero state

    def forward(self) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, d_h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def recurrent_gradient(self, t: int, d_rec: torch.Tensor) -> torch.Tensor | None:
        """Through h_(t-1) W_hh^T: W_hh's gradient, and d h_(t-1) (None at t = 0)."""
        previous = self.h[t]
        if previous is None:
            return None
        self.grad_w_hh.baddbmm_(d_rec.transpose(1, 2), previous)
        return torch.bmm(d_rec, self.w_hh)


class _LSTMSteps(_Steps):
    def forward(self) -> torch.Tensor:
        hidden = self.hidden
        self.gates: list[torch.Tensor] = []  # activated i, f, g, o per step
        self.c: list[torch.Tensor | None] = [None]
        self.tanh_c: list[torch.Tensor] = []
        for t in range(self.pre.shape[1]):
            h = self.h[-1]
            gates = self.pre[:, t]
            if h is not None:
                gates.baddbmm_(h, self.w_hh_t)
            gates[..., : 2 * hidden].sigmoid_()
            self.tanh_(gates[..., 2 * hidden : 3 * hidden])
            gates[..., 3 * hidden :].sigmoid_()
            i, f, g, o = gates.chunk(4, dim=2)
            c_prev = self.c[-1]
            c = i * g if c_prev is None else torch.addcmul(i * g, f, c_prev)
            tanh_c = self.tanh_(c.clone())
            self.gates.append(gates)
            self.c.append(c)
            self.tanh_c.append(tanh_c)
            self.h.append(o * tanh_c)
        h_last = self.h[-1]
        assert h_last is not None
        return h_last

    def backward(self, d_h: torch.Tensor) -> torch.Tensor:
        d_pre = torch.empty_like(self.pre)
        d_c: torch.Tensor | None = None
        for t in range(self.pre.shape[1] - 1, -1, -1):
            i, f, g, o = self.gates[t].chunk(4, dim=2)
            tanh_c, c_prev = self.tanh_c[t], self.c[t]
            d_i, d_f, d_g, d_o = d_pre[:, t].chunk(4, dim=2)
            torch.mul(d_h, tanh_c, out=d_o)
            # dc = dh o (1 - tanh(c)^2) + dc from step t + 1
            d_c_t = (1 - tanh_c * tanh_c).mul_(o).mul_(d_h)
            if d_c is not None:
                d_c_t += d_c
            torch.mul(d_c_t, g, out=d_i)
            torch.mul(d_c_t, i, out=d_g)
            if c_prev is None:
                d_f.zero_()
            else:
                torch.mul(d_c_t, c_prev, out=d_f)
            # through the activations: sigmoid' = s (1 - s), tanh' = 1 - t^2
            for d_gate, gate in ((d_i, i), (d_f, f), (d_o, o)):
                d_gate.mul_(gate - gate * gate)
            d_g.mul_(1 - g * g)
            d_c = d_c_t.mul_(f)
            d_prev = self.recurrent_gradient(t, d_pre[:, t])
            if d_prev is None:
                break
            d_h = d_prev
        return d_pre


class _GRUSteps(_Steps):
    def __init__(self, model: StackedRNN, pre: torch.Tensor) -> None:
        super().__init__(model, pre)
        self.bias_hn = model.params[3]
        self.grad_bias_hn = torch.zeros_like(self.bias_hn)
        self.extra_grads = [self.grad_bias_hn]

    def forward(self) -> torch.Tensor:
        hidden = self.hidden
        self.rz: list[torch.Tensor] = []
        self.n: list[torch.Tensor] = []
        self.h_n: list[torch.Tensor] = []  # h W_hn^T + b_hn, inside the reset product
        for t in range(self.pre.shape[1]):
            h = self.h[-1]
            x_rz, x_n = self.pre[:, t, :, : 2 * hidden], self.pre[:, t, :, 2 * hidden :]
            if h is None:
                rz = x_rz.sigmoid()
                h_n = self.bias_hn.unsqueeze(1).expand_as(x_n)
            else:
                recurrent = torch.bmm(h, self.w_hh_t)
                rz = recurrent[..., : 2 * hidden].add_(x_rz).sigmoid_()
                h_n = recurrent[..., 2 * hidden :].add_(self.bias_hn.unsqueeze(1))
            r, z = rz[..., :hidden], rz[..., hidden:]
            n = self.tanh_(torch.addcmul(x_n, r, h_n))
            self.rz.append(rz)
            self.n.append(n)
            self.h_n.append(h_n)
            self.h.append(n - z * n if h is None else torch.lerp(n, h, z))
        h_last = self.h[-1]
        assert h_last is not None
        return h_last

    def backward(self, d_h: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden
        d_pre = torch.empty_like(self.pre)
        d_rec = torch.empty_like(self.pre[:, 0])  # d (h W_hh^T + [0, 0, b_hn])
        for t in range(self.pre.shape[1] - 1, -1, -1):
            rz, n, h_n, h_prev = self.rz[t], self.n[t], self.h_n[t], self.h[t]
            r, z = rz[..., :hidden], rz[..., hidden:]
            d_r, d_z, d_n = d_pre[:, t].chunk(3, dim=2)
            # h = (1 - z) n + z h_prev
            torch.mul(d_h, 1 - z, out=d_n)
            d_n.mul_(1 - n * n)  # through tanh: d of x_n + r h_n
            if h_prev is None:
                torch.mul(d_h, n, out=d_z).neg_()
            else:
                torch.mul(d_h, h_prev - n, out=d_z)
            d_z.mul_(z - z * z)
            torch.mul(d_n, h_n, out=d_r)
            d_r.mul_(r - r * r)
            d_rec_n = d_rec[..., 2 * hidden :]
            torch.mul(d_n, r, out=d_rec_n)
            self.grad_bias_hn += d_rec_n.sum(dim=1)
            d_rec[..., : 2 * hidden] = d_pre[:, t, :, : 2 * hidden]
            d_prev = self.recurrent_gradient(t, d_rec)
            if d_prev is None:
                break
            d_h = d_prev.addcmul_(d_h, z)
        return d_pre


class _TanhSteps(_Steps):
    def forward(self) -> torch.Tensor:
        for t in range(self.pre.shape[1]):
            h = self.h[-1]
            term = self.pre[:, t]
            if h is not None:
                term.baddbmm_(h, self.w_hh_t)
            self.h.append(self.tanh_(term))
        h_last = self.h[-1]
        assert h_last is not None
        return h_last

    def backward(self, d_h: torch.Tensor) -> torch.Tensor:
        d_pre = torch.empty_like(self.pre)
        for t in range(self.pre.shape[1] - 1, -1, -1):
            h = self.h[t + 1]
            assert h is not None
            d_t = d_pre[:, t]
            torch.mul(d_h, 1 - h * h, out=d_t)
            d_prev = self.recurrent_gradient(t, d_t)
            if d_prev is None:
                break
            d_h = d_prev
        return d_pre


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """In place: tanh(x) = 2 sigmoid(2x) - 1 (see `_tanh`)."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) = 2 sigmoid(2x) - 1: on this kind of CPU torch's sigmoid is about 3x faster
    than its tanh (measured: 148 us against 533 us for 131K floats, one thread)."""
    return torch.sigmoid(x * 2).mul(2).sub(1)
