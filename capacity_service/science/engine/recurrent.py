"""Stacked LSTM, GRU and tanh RNN trials: batched matrix products per time step.

The input projection of all steps is one batched product per stack; each step then adds
one batched product with the hidden state. Gate blocks are in PyTorch's order, with the
model's one effective bias per gate (and the GRU's b_hn inside the reset product), the
same cell as `models.RecurrentCell`. Training steps run a hand-written backward pass
through time in a gate-major layout, with the activations computed in place (a test pins
it to autograd's gradients); `forward` (autograd) and `evaluate` (the accuracy pass) share
`_steps`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from capacity_service.science.engine.stacked import Batch, StackedModel, output_gradient
from capacity_service.specs import GATE_BLOCKS, RNNSpec


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
        cell = {"lstm": _LSTMSteps, "gru": _GRUSteps, "rnn": _TanhSteps}[kind](self, batch.x)
        w_out, b_out = self.params[-2], self.params[-1]
        h = cell.forward()
        logits = torch.baddbmm(b_out.unsqueeze(1), h, w_out.transpose(1, 2))
        grad = output_gradient(logits, batch.y, batch.weight)
        grad_w_out = torch.bmm(grad.transpose(1, 2), h)
        grad_b_out = grad.sum(dim=1)
        cell.backward(torch.bmm(grad, w_out))
        grads = [*cell.grads(), grad_w_out, grad_b_out]
        self.update(grads, neg_lr, momentum)


class _Steps:
    """The recurrence of one training step, forward then backward through time, on
    stacked tensors in gate-major layout: gate g of row r is "virtual row" r G + g, so
    every gate block is one dense (B, H) matrix (elementwise work on gate slices of a
    (B, G H) layout was measured about 10x slower), and each step's terms `pre[t]`
    (T, R G, B, H) take the recurrent product in place."""

    def __init__(self, model: StackedRNN, x: torch.Tensor) -> None:
        spec = model.spec
        self.rows, self.size, self.steps, n_in = x.shape
        self.gates, self.hidden = GATE_BLOCKS[spec.kind], spec.hidden
        virtual = self.rows * self.gates
        w_ih, w_hh, bias = model.params[0], model.params[1], model.params[2]
        self.w_ih = w_ih.view(virtual, self.hidden, n_in)
        self.w_hh = w_hh.view(virtual, self.hidden, self.hidden)
        self.w_hh_t = self.w_hh.transpose(1, 2)
        # every gate reads the row's input: (R G, T, B, n_in)
        self.x = (
            x.transpose(1, 2)
            .unsqueeze(1)
            .expand(self.rows, self.gates, self.steps, self.size, n_in)
            .reshape(virtual, self.steps, self.size, n_in)
        )
        self.pre = torch.empty(self.steps, virtual, self.size, self.hidden, device=x.device)
        bias_g = bias.view(virtual, 1, self.hidden)
        for t in range(self.steps):
            torch.baddbmm(bias_g, self.x[:, t], self.w_ih.transpose(1, 2), out=self.pre[t])
        self.d_pre = torch.empty_like(self.pre)
        self.tanh_ = torch.Tensor.tanh_ if x.is_cuda else _tanh_
        self.grad_w_hh = torch.zeros_like(self.w_hh)
        self.h: list[torch.Tensor | None] = [None]  # h_t (R, B, H); h_0 is the zero state
        self.h_wide: list[torch.Tensor | None] = [None]  # h_t for every gate (R G, B, H)

    def record(self, h: torch.Tensor) -> torch.Tensor:
        """Keep step t's state h (R, B, H), and beside it the row's state for each of its
        gates (R G, B, H), which the next step's product and the backward pass read."""
        wide = h.unsqueeze(1).expand(self.rows, self.gates, self.size, self.hidden)
        self.h.append(h)
        self.h_wide.append(wide.reshape(-1, self.size, self.hidden))
        return h

    def blocks(self, t: int, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Step t's gate blocks of `tensor` (pre or d_pre), each (R, B, H)."""
        return tensor[t].view(self.rows, self.gates, self.size, self.hidden).unbind(1)

    def forward(self) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, d_h: torch.Tensor) -> None:
        raise NotImplementedError

    def grads(self) -> list[torch.Tensor]:
        """Gradients of W_ih, W_hh, the bias (and the GRU's b_hn), in parameter order."""
        d_pre = self.d_pre
        grad_w_ih = torch.zeros_like(self.w_ih)
        for t in range(self.steps):
            grad_w_ih.baddbmm_(d_pre[t].transpose(1, 2), self.x[:, t])
        grad_bias = d_pre.sum(dim=(0, 2))  # (R G, H)
        rows = self.rows
        return [grad_w_ih.view(rows, -1, grad_w_ih.shape[2]),
                self.grad_w_hh.view(rows, -1, self.hidden), grad_bias.view(rows, -1)]  # fmt: skip

    def recurrent_gradient(self, t: int, d_rec: torch.Tensor) -> torch.Tensor | None:
        """Through h_(t-1) W_hh^T, with d_rec (R G, B, H): W_hh's gradient, and
        d h_(t-1) (None at t = 0)."""
        previous = self.h_wide[t]
        if previous is None:
            return None
        self.grad_w_hh.baddbmm_(d_rec.transpose(1, 2), previous)
        d_prev = torch.bmm(d_rec, self.w_hh)  # (R G, B, H): summed over the gates
        return d_prev.view(self.rows, self.gates, self.size, self.hidden).sum(dim=1)


class _LSTMSteps(_Steps):
    def forward(self) -> torch.Tensor:
        self.c: list[torch.Tensor | None] = [None]
        self.tanh_c: list[torch.Tensor] = []
        for t in range(self.steps):
            wide = self.h_wide[-1]
            if wide is not None:
                self.pre[t].baddbmm_(wide, self.w_hh_t)
            i, f, g, o = self.blocks(t, self.pre)
            i.sigmoid_()
            f.sigmoid_()
            self.tanh_(g)
            o.sigmoid_()
            c_prev = self.c[-1]
            c = i * g if c_prev is None else torch.addcmul(i * g, f, c_prev)
            tanh_c = self.tanh_(c.clone())
            self.c.append(c)
            self.tanh_c.append(tanh_c)
            h = self.record(o * tanh_c)
        return h

    def backward(self, d_h: torch.Tensor) -> None:
        d_c: torch.Tensor | None = None
        for t in range(self.steps - 1, -1, -1):
            i, f, g, o = self.blocks(t, self.pre)
            d_i, d_f, d_g, d_o = self.blocks(t, self.d_pre)
            tanh_c, c_prev = self.tanh_c[t], self.c[t]
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
            d_prev = self.recurrent_gradient(t, self.d_pre[t])
            if d_prev is None:
                return
            d_h = d_prev


class _GRUSteps(_Steps):
    def __init__(self, model: StackedRNN, x: torch.Tensor) -> None:
        super().__init__(model, x)
        self.bias_hn = model.params[3].unsqueeze(1)  # (R, 1, H)
        self.d_rec = torch.empty_like(self.pre[0])  # d (h W_hh^T + [0, 0, b_hn]), per step

    def forward(self) -> torch.Tensor:
        self.n: list[torch.Tensor] = []
        self.h_n: list[torch.Tensor] = []  # h W_hn^T + b_hn, inside the reset product
        for t in range(self.steps):
            previous, wide = self.h[-1], self.h_wide[-1]
            x_r, x_z, x_n = self.blocks(t, self.pre)
            if wide is None:
                h_n = self.bias_hn.expand_as(x_n)
            else:
                rec_r, rec_z, rec_n = (
                    torch.bmm(wide, self.w_hh_t)
                    .view(self.rows, self.gates, self.size, self.hidden)
                    .unbind(1)
                )  # fmt: skip
                x_r.add_(rec_r)
                x_z.add_(rec_z)
                h_n = rec_n.add_(self.bias_hn)
            r, z = x_r.sigmoid_(), x_z.sigmoid_()  # pre keeps the activated r and z
            n = self.tanh_(torch.addcmul(x_n, r, h_n))
            self.n.append(n)
            self.h_n.append(h_n)
            # (1 - z) n + z h
            h = self.record(n - z * n if previous is None else torch.lerp(n, previous, z))
        return h

    def backward(self, d_h: torch.Tensor) -> None:
        self.grad_bias_hn = torch.zeros_like(self.bias_hn.squeeze(1))
        d_rec_r, d_rec_z, d_rec_n = self.d_rec.view(
            self.rows, self.gates, self.size, self.hidden).unbind(1)  # fmt: skip
        for t in range(self.steps - 1, -1, -1):
            r, z, _ = self.blocks(t, self.pre)
            d_r, d_z, d_n = self.blocks(t, self.d_pre)
            n, h_n, h_prev = self.n[t], self.h_n[t], self.h[t]
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
            torch.mul(d_n, r, out=d_rec_n)
            self.grad_bias_hn += d_rec_n.sum(dim=1)
            d_rec_r.copy_(d_r)
            d_rec_z.copy_(d_z)
            d_prev = self.recurrent_gradient(t, self.d_rec)
            if d_prev is None:
                return
            d_h = d_prev.addcmul_(d_h, z)

    def grads(self) -> list[torch.Tensor]:
        return [*super().grads(), self.grad_bias_hn]


class _TanhSteps(_Steps):
    def forward(self) -> torch.Tensor:
        for t in range(self.steps):
            wide = self.h_wide[-1]
            if wide is not None:
                self.pre[t].baddbmm_(wide, self.w_hh_t)
            h = self.record(self.tanh_(self.pre[t]))  # one gate: the wide state is h
        return h

    def backward(self, d_h: torch.Tensor) -> None:
        for t in range(self.steps - 1, -1, -1):
            h = self.pre[t]  # activated in place
            torch.mul(d_h, 1 - h * h, out=self.d_pre[t])
            d_prev = self.recurrent_gradient(t, self.d_pre[t])
            if d_prev is None:
                return
            d_h = d_prev


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """In place: tanh(x) = 2 sigmoid(2x) - 1 (see `_tanh`)."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) = 2 sigmoid(2x) - 1: on this kind of CPU torch's sigmoid is about 3x faster
    than its tanh (measured: 148 us against 533 us for 131K floats, one thread)."""
    return torch.sigmoid(x * 2).mul(2).sub(1)
