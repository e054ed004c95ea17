"""FCDNN, CNN and RNN models of the memorization task, and their parameter groups.

Every parameter tensor is an effective parameter: the recurrent cells hold their own
weights rather than taking torch.nn.LSTM's, whose two bias vectors per gate (bias_ih +
bias_hh) would count one effective bias twice, and run them through the same fused kernels
with the hidden-side bias held at zero. Each model says, per tensor, which layer it belongs
to and whether it is quantizable (hidden weights yes; biases and output layer no).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import TypeAdapter
from torch import nn

from capacity_service.specs import (
    GATE_BLOCKS,
    N_CLASSES,
    CNNSpec,
    FCDNNSpec,
    ModelSpec,
    ParameterCount,
    ParameterGroup,
    RNNSpec,
)

ModelSpecT = FCDNNSpec | CNNSpec | RNNSpec


class MemorizationModel(nn.Module):
    """A model that maps a batch of inputs to 2 logits and can describe its parameters."""

    spec: ModelSpecT  # what it was built from
    # whether its output weights start at zero rather than He (see `he_initialize`)
    zero_output: ClassVar[bool] = False

    def layer_of(self, name: str) -> str:
        """The layer kind of parameter `name`: dense, conv, recurrent or output."""
        raise NotImplementedError

    def parameter_groups(self) -> tuple[ParameterGroup, ...]:
        groups = []
        for name, tensor in self.named_parameters():
            layer = self.layer_of(name)
            is_weight = name.rsplit(".", 1)[-1].startswith("weight")
            groups.append(
                ParameterGroup(
                    name=name,
                    shape=tuple(tensor.shape),
                    count=tensor.numel(),
                    layer=layer,
                    quantizable=is_weight and layer != "output",
                )
            )
        return tuple(groups)


class FCDNN(MemorizationModel):
    def __init__(self, spec: FCDNNSpec) -> None:
        super().__init__()
        self.spec: FCDNNSpec = spec
        widths = [spec.input_bits] + [spec.width] * spec.depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.output = nn.Linear(spec.width, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n_in) -> (B, 2)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.output(x)  # type: ignore[no-any-return]

    def layer_of(self, name: str) -> str:
        return "output" if name.startswith("output.") else "dense"


def pool_after(conv_layers: int) -> frozenset[int]:
    """Indices of the convolution layers followed by one of the three 2x2 max-pools.

    The pools are spread evenly over the stack and the last one closes it: 3 layers pool
    after each; 9 layers after the 3rd, 6th and 9th.
    """
    return frozenset(round(conv_layers * k / 3) - 1 for k in (1, 2, 3))


class CNN(MemorizationModel):
    # The thesis counts the initialization among the settings its search chooses. With He
    # output weights the first steps' large random logits drive the net to shrink its
    # activations, and at 4 channels a layer can lose every unit: CNN 3x3 at N = 1,307,
    # lr 0.0316, batch 128 had 5-6 of 16 initializations stay at 50% for good, against 2
    # of 16 with a zero output layer, whose live trials also learned as fast (77-86% at
    # 100 epochs, against 69-84%).
    zero_output = True

    def __init__(self, spec: CNNSpec) -> None:
        super().__init__()
        self.spec: CNNSpec = spec
        channels = [1] + [spec.channels] * spec.conv_layers
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, spec.kernel, padding=spec.kernel // 2)
            for a, b in itertools.pairwise(channels)
        )
        self.pools = pool_after(spec.conv_layers)
        features = spec.channels * (spec.input_size // 8) ** 2
        self.fc = nn.Linear(features, spec.fc_hidden) if spec.fc_hidden else None
        self.output = nn.Linear(spec.fc_hidden or features, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S) -> (B, 2)
        for index, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if index in self.pools:
                x = nn.functional.max_pool2d(x, 2)
        x = x.flatten(1)  # (B, C * (S/8)^2)
        if self.fc is not None:
            x = torch.relu(self.fc(x))
        return self.output(x)  # type: ignore[no-any-return]

    def layer_of(self, name: str) -> str:
        if name.startswith("output."):
            return "output"
        return "conv" if name.startswith("convs.") else "dense"


class RecurrentCell(nn.Module):
    """LSTM, GRU or tanh RNN layer with one effective bias per gate.

    The GRU keeps a second bias for its candidate's hidden term (b_hn), because it sits
    inside the reset gate's product and is not redundant with the input bias. The forward
    pass is PyTorch's fused torch.lstm / torch.gru / torch.rnn_tanh (what nn.LSTM, nn.GRU
    and nn.RNN run), given `bias` as b_ih and a b_hh made per call from zeros and b_hn.
    """

    def __init__(self, cell: str, n_in: int, hidden: int) -> None:
        super().__init__()
        self.cell = cell
        self.hidden = hidden
        rows = GATE_BLOCKS[cell] * hidden  # gate blocks stacked in PyTorch's order
        self.weight_ih = nn.Parameter(torch.empty(rows, n_in))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden))
        self.bias = nn.Parameter(torch.zeros(rows))
        self.bias_hn = nn.Parameter(torch.zeros(hidden)) if cell == "gru" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, n_in) -> the last hidden state (B, H)."""
        h0 = x.new_zeros(1, x.shape[0], self.hidden)  # (layers, B, H), even batch-first
        weights = [self.weight_ih, self.weight_hh, self.bias, self._bias_hh()]
        # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
        # batch_first), as nn.LSTM / nn.GRU / nn.RNN pass them
        flags = (True, 1, 0.0, self.training, False, True)
        if self.cell == "lstm":
            _, h, _ = torch.lstm(x, (h0, h0), weights, *flags)
        elif self.cell == "gru":
            _, h = torch.gru(x, h0, weights, *flags)
        else:
            _, h = torch.rnn_tanh(x, h0, weights, *flags)
        return h[0]

    def _bias_hh(self) -> torch.Tensor:
        """The fused kernels' hidden-side bias, made per call so it is no parameter: zero,
        except the GRU's b_hn, which PyTorch applies inside r * (W_hn h + b_hn)."""
        if self.bias_hn is None:
            return self.bias.new_zeros(self.bias.shape)
        return torch.cat((self.bias_hn.new_zeros(2 * self.hidden), self.bias_hn))


class RNN(MemorizationModel):
    def __init__(self, spec: RNNSpec) -> None:
        super().__init__()
        self.spec: RNNSpec = spec
        self.cell = RecurrentCell(spec.kind, spec.n_in, spec.hidden)
        self.output = nn.Linear(spec.hidden, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n_in) -> (B, 2)
        return self.output(self.cell(x))  # type: ignore[no-any-return]

    def layer_of(self, name: str) -> str:
        return "output" if name.startswith("output.") else "recurrent"


def _construct(spec: ModelSpecT) -> MemorizationModel:
    if isinstance(spec, FCDNNSpec):
        return FCDNN(spec)
    if isinstance(spec, CNNSpec):
        return CNN(spec)
    return RNN(spec)


def initial_parameters(spec: ModelSpecT, seed: int) -> list[torch.Tensor]:
    """The starting parameters of `spec`'s model, in `parameters()` order, on the CPU:
    He (Kaiming normal, fan-in) weights and zero biases, drawn from `seed`; the output
    weights of a model that asks for it (`zero_output`: CNN) start at zero. Drawn without
    building the model: the batched engine stacks them as they are (building K modules
    cost it a fifth of a short FCDNN run)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for _, shape, drawn in _layout(spec):
        tensor = torch.zeros(shape)
        if drawn:
            nn.init.kaiming_normal_(tensor, nonlinearity="relu", generator=generator)
        tensors.append(tensor)
    return tensors


def parameter_shapes(spec: ModelSpecT) -> tuple[torch.Size, ...]:
    """The shape of each of the model's parameters, in `parameters()` order."""
    return tuple(shape for _, shape, _ in _layout(spec))


def parameter_names(spec: ModelSpecT) -> tuple[str, ...]:
    """The name of each of the model's parameters, in `parameters()` order, as they are
    before a parametrization (a fixed-point precision) moves one under
    `parametrizations.`: e.g. "cell.weight_ih"; `getattr` along the name reads the weight
    the forward pass computes with."""
    return tuple(name for name, _, _ in _layout(spec))


@functools.cache
def _layout(spec: ModelSpecT) -> tuple[tuple[str, torch.Size, bool], ...]:
    """Each parameter's name, shape and whether it is drawn (He) or starts at zero."""
    with torch.device("meta"):
        model = _construct(spec)
    return tuple(
        (name, tensor.shape, name.rsplit(".", 1)[-1].startswith("weight")
         and not (model.zero_output and model.layer_of(name) == "output"))
        for name, tensor in model.named_parameters()
    )  # fmt: skip


def build_model(
    spec: ModelSpecT, seed: int, device: torch.device | str = "cpu"
) -> MemorizationModel:
    """The model of `spec` with its `initial_parameters(spec, seed)` (the same weights on
    every device), on `device`."""
    model = _construct(spec)
    with torch.no_grad():
        for tensor, initial in zip(model.parameters(), initial_parameters(spec, seed),
                                   strict=True):  # fmt: skip
            tensor.copy_(initial)
    return model.to(device)


def count_parameters(spec: ModelSpecT | Mapping[str, Any]) -> ParameterCount:
    """Effective parameters per group and in total, without allocating any weights.

    `spec` is a model spec or its JSON form, e.g. {"kind": "lstm", "hidden": 32}.
    """
    if isinstance(spec, Mapping):
        spec = TypeAdapter(ModelSpec).validate_python(spec)
    with torch.device("meta"):
        groups = _construct(spec).parameter_groups()
    return ParameterCount(total=sum(g.count for g in groups), groups=groups)
