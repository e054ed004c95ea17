"""Fixed-point versions of the memorization models.

Every quantizable group (FCDNN hidden layers, CNN convolution kernels, RNN weight
matrices) computes with W' = D * codes through a parametrization, each group with its own
D; biases and the output layer stay in floating point. The float W stays the parameter,
so the trainer retrains it through the straight-through path. The sweep re-estimates D
after every retraining epoch (`refit_steps`; the thesis keeps it fixed); it is a buffer,
so a snapshot of the model's state keeps the D its weights were quantized with.

Incremental quantization (Zhou et al. 2017, "Incremental network quantization") instead
fixes a growing share of each group at its codes (`freeze_share`, the largest weights
first) while the rest stay float and are retrained to make up for them; the frozen share
learns nothing. When the share reaches 1 the group computes with W' = D * codes, as above.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from capacity_service.science.models import MemorizationModel
from capacity_service.science.quantize import (
    fake_quantize,
    lloyd_max_refine,
    lloyd_max_step,
    quantize,
    quantize_codes,
)


class FixedPointWeight(nn.Module):
    """Parametrization: the float weight in, its fixed-point value out, the gradient
    straight through. D is a buffer: changed only by `refit_steps`. With a `frozen` mask
    (incremental quantization, `freeze_share`) only the masked weights compute with their
    fixed-point value, and get no gradient; the others stay float."""

    step: torch.Tensor
    frozen: torch.Tensor | None

    def __init__(self, bits: int, step: float) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("step", torch.tensor(step))
        self.register_buffer("frozen", None)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.frozen is None:
            return fake_quantize(weight, self.bits, self.step)
        fixed = quantize(weight, self.bits, self.step).detach()
        return torch.where(self.frozen, fixed, weight)


def quantizable_groups(model: MemorizationModel) -> list[str]:
    """Names of the parameters a precision applies to (the float names, not parametrized)."""
    return [group.name for group in model.parameter_groups() if group.quantizable]


def apply_precision(model: MemorizationModel, bits: int) -> dict[str, float]:
    """Quantize every quantizable group of `model` to `bits`, starting from its current
    float weights; returns the step D chosen for each group (Lloyd-Max)."""
    clear_precision(model)
    steps = {}
    for name in quantizable_groups(model):
        owner, attribute = _owner(model, name)
        weight = getattr(owner, attribute)
        step = lloyd_max_step(weight, bits)
        quantizer = FixedPointWeight(bits, step).to(weight.device, weight.dtype)
        parametrize.register_parametrization(owner, attribute, quantizer)
        steps[name] = step
    return steps


@torch.no_grad()
def refit_steps(model: MemorizationModel, search: bool = False) -> dict[str, float]:
    """Re-estimate each quantized group's step D (Lloyd-Max) from its float weights as
    they are now, keeping its precision; returns the new steps. By default the
    alternation starts from the current D; `search` starts it from a grid."""
    steps = {}
    for name, quantizer in _quantizers(model).items():
        weight = float_weight(model, name)
        step = (
            lloyd_max_step(weight, quantizer.bits)
            if search
            else lloyd_max_refine(weight, quantizer.bits, float(quantizer.step))
        )
        quantizer.step.fill_(step)
        steps[name] = step
    return steps


@torch.no_grad()
def freeze_share(model: MemorizationModel, share: float) -> None:
    """Fix `share` (0 to 1) of each quantized group's weights at their codes: those fixed
    already, then the largest in magnitude of the rest. The others compute in float and
    are retrained; a fixed weight never moves again (it gets no gradient)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    for name, quantizer in _quantizers(model).items():
        weight = float_weight(model, name)
        frozen = quantizer.frozen
        if frozen is None:
            frozen = torch.zeros_like(weight, dtype=torch.bool)
        more = round(share * weight.numel()) - int(frozen.sum())
        if more > 0:
            # the fixed ones rank last (-1 < any magnitude), so topk adds only new ones
            magnitude = weight.abs().masked_fill(frozen, -1.0).flatten()
            frozen = frozen.flatten().clone()
            frozen[magnitude.topk(more).indices] = True
            frozen = frozen.view_as(weight)
        quantizer.frozen = frozen


def fix_other_groups(model: MemorizationModel, name: str) -> None:
    """Fix every quantized group at its codes except `name`, which is left with no fixed
    share, so that an incremental retraining (`freeze_share` from a share below 1)
    re-quantizes that group alone while the others hold still."""
    quantizers = _quantizers(model)
    if name not in quantizers:
        raise ValueError(f"{name} is not a quantized group of this model")
    for group, quantizer in quantizers.items():
        fixed = torch.ones_like(float_weight(model, group), dtype=torch.bool)
        quantizer.frozen = None if group == name else fixed


def thaw(model: MemorizationModel) -> None:
    """Every quantized group back to computing all of its weights in fixed point with
    the gradient straight through (no frozen share)."""
    for quantizer in _quantizers(model).values():
        quantizer.frozen = None


def quantizer_of(model: MemorizationModel, name: str) -> FixedPointWeight | None:
    """Group `name`'s fixed-point parametrization; None where the group is float."""
    return _quantizers(model).get(name)


def current_steps(model: MemorizationModel) -> dict[str, float]:
    """The step D each quantized group computes with now."""
    return {name: float(quantizer.step) for name, quantizer in _quantizers(model).items()}


def _quantizers(model: MemorizationModel) -> dict[str, FixedPointWeight]:
    """Each quantized group's parametrization, by the group's (unparametrized) name."""
    found = {}
    for path, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attribute, chain in module.parametrizations.items():
                if isinstance(chain[0], FixedPointWeight):
                    found[f"{path}.{attribute}" if path else attribute] = chain[0]
    return found


def clear_precision(model: MemorizationModel) -> None:
    """Back to floating point, keeping the float weights as retraining left them."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attribute in list(module.parametrizations.keys()):  # type: ignore[union-attr,operator]
                parametrize.remove_parametrizations(module, attribute, leave_parametrized=False)


def float_weight(model: MemorizationModel, name: str) -> torch.Tensor:
    """The float weight behind group `name`, quantized or not."""
    owner, attribute = _owner(model, name)
    if parametrize.is_parametrized(owner, attribute):
        original = owner.parametrizations[attribute].original  # type: ignore[union-attr,index]
        assert isinstance(original, torch.Tensor)
        return original
    weight = getattr(owner, attribute)
    assert isinstance(weight, torch.Tensor)
    return weight


@torch.no_grad()
def levels_used(model: MemorizationModel, bits: int, steps: dict[str, float]) -> dict[str, int]:
    """How many distinct integer codes each quantized group uses (at most 2^n - 1)."""
    return {
        name: int(torch.unique(quantize_codes(float_weight(model, name), bits, step)).numel())
        for name, step in steps.items()
    }


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attribute = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attribute
