"""μP, the maximal-update parametrization (Yang et al., "Tensor Programs V", 2022): the rules that make a
learning rate tuned at one width right at every width, as `model.parametrization=mup`.

The rules are those of the `mup` package (microsoft/mup 1.0.0, the paper's reference code), written out here
because that package has been unmaintained since 2022; tests/test_mup.py checks these against it. Each
parameter's dimensions are compared with those of the same model at `model.base_width` (built on the meta
device, which draws no random numbers): a dimension that differs from its base is a *width* dimension with
multiplier dim / base_dim, as mup's `set_base_shapes` decides (a dimension equal to its base counts as fixed;
its multiplier would be 1 either way). With the multipliers:

- init: hidden matrices (two width dimensions) keep a variance of 1/fan-in. The MLP, drawn with a fan-in init
  (torch's, Kaiming's), already has it; its output layer's weight and bias and its hidden biases are then
  multiplied by sqrt(fan-in multiplier) (set_base_shapes' rescaling: `MuReadout`, `rescale_linear_bias`). The
  GPT draws each hidden matrix with nanoGPT's std / sqrt(fan-in multiplier) and every other weight (the
  embeddings, the tied head) with nanoGPT's std (`mup.init.normal_`);
- forward: the output layer's input is divided by its fan-in multiplier (MuReadout's 1/width readout), and
  attention logits are scaled by 1/d_head instead of 1/sqrt(d_head) (equal at base width);
- learning rates, per parameter (mup's `MuAdam`, `MuSGD`): Adam-like optimizers divide the LR of hidden
  matrices by their fan-in multiplier; SGD multiplies the LR of vector-like parameters (one width dimension:
  biases, norms, embeddings, input and output layers) by their width multiplier and that of hidden matrices
  by fan-out / fan-in multiplier. Weight decay is divided by the same factor, so p (1 - lr wd) is unchanged.

The multipliers reach the optimizer as parameter groups whose *base* LR is optimizer.lr x multiplier (kept in
the group as `lr_multiplier`): every schedule and warmup scales each group from its base, so they stay pure
functions of the step, and a checkpoint's optimizer state carries the groups. At base width every multiplier is
1 and μP is the standard parametrization exactly.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import nn

PARAMETRIZATIONS = ("sp", "mup")

# Optimizers whose μP learning-rate rule is known (mup's optim.py): those that normalise the gradient
# entrywise take MuAdam's rule, plain and momentum SGD take MuSGD's. Named by (top-level package, class).
ADAM_LIKE = {("torch", "Adam"): "adam, adamw, amsgrad", ("torch", "AdamW"): "adamw", ("torch", "NAdam"): "nadam",
             ("torch", "RAdam"): "radam", ("torch", "Adamax"): "adamax", ("torch", "RMSprop"): "rmsprop",
             ("torch", "Adagrad"): "adagrad", ("lion_pytorch", "Lion"): "lion"}
SGD_LIKE = {("torch", "SGD"): "sgd, momentum"}
SUPPORTED = "adam, adamw, amsgrad, nadam, radam, adamax, rmsprop, adagrad, lion, sgd, momentum"

# The width key of each model with μP (mode=coord_check sets it): MLP's every hidden layer, the GPT's n_embd.
WIDTH_KEYS = {"lrtrain.models.MLP": "hidden", "lrtrain.models.GPT": "n_embd"}

# Per dimension: its width multiplier (dim / base_dim), or None for a dimension that does not grow with width.
Dims = tuple[Optional[float], ...]


def width_dims(model: nn.Module, base: nn.Module) -> dict[str, Dims]:
    """Each parameter's dimensions against the base model's, parameter for parameter (the base may lack
    modules without parameters, such as the readout's `Scale`)."""
    return {name: tuple(None if d == b else d / b for d, b in zip(p.shape, q.shape))
            for (name, p), q in zip(model.named_parameters(), base.parameters(), strict=True)}


def width_mult(dims: Dims) -> float:
    """mup's InfShape.width_mult: the multiplier of the last width dimension (fan-in for a hidden matrix)."""
    return next((m for m in reversed(dims) if m is not None), 1.0)


def fan_in_mult(dims: Dims) -> float:
    return dims[1] if len(dims) > 1 and dims[1] is not None else 1.0


def lr_multiplier(dims: Dims, rule: str) -> float:
    """μP's factor on a parameter's LR: `rule` "adam" (MuAdam) or "sgd" (MuSGD)."""
    ninf = sum(m is not None for m in dims)
    if rule == "adam":
        return 1.0 / width_mult(dims) if ninf == 2 else 1.0
    if ninf == 1:
        return width_mult(dims)
    if ninf == 2:
        return dims[0] / dims[1]  # type: ignore[operator]  # MuSGD: divided by fan-in / fan-out multiplier
    return 1.0


def rule_for(factory: Callable[..., Any]) -> Optional[str]:
    """"adam", "sgd", or None for an optimizer whose μP rule is not known here."""
    cls = getattr(factory, "func", factory)
    for c in getattr(cls, "__mro__", ()):
        key = (c.__module__.split(".")[0], c.__name__)
        if key in ADAM_LIKE:
            return "adam"
        if key in SGD_LIKE:
            return "sgd"
    return None


def mup_groups(model: nn.Module, groups: list[dict[str, Any]], lr: float, rule: str) -> list[dict[str, Any]]:
    """`groups` (lrtrain's decay/no-decay groups) split by μP LR multiplier: each gets lr x multiplier as its base
    LR, weight decay / multiplier, and `lr_multiplier`. Groups at multiplier 1 come first, so steps.csv's LR
    (the first group's) is the schedule at optimizer.lr where the model has such parameters."""
    dims = {id(p): model.mup_dims[name] for name, p in model.named_parameters()}
    out = []
    for group in groups:
        by_mult: dict[float, list[torch.Tensor]] = {}
        for p in group["params"]:
            by_mult.setdefault(lr_multiplier(dims[id(p)], rule), []).append(p)
        for mult, params in by_mult.items():
            out.append({**group, "params": params, "lr": lr * mult, "lr_multiplier": mult,
                        "weight_decay": group.get("weight_decay", 0.0) / mult})
    return sorted(out, key=lambda g: g["lr_multiplier"] != 1.0)


@torch.no_grad()
def rescale_fan_in_init(model: nn.Module, readout: nn.Linear) -> None:
    """mup's set_base_shapes(rescale_params=True) on a model drawn with a fan-in init (torch's, Kaiming's): the
    readout's weight and bias, and every other Linear's bias, times sqrt(fan-in multiplier)."""
    names = {id(p): name for name, p in model.named_parameters()}
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        dims = model.mup_dims[names[id(module.weight)]]
        scale = math.sqrt(width_mult(dims) if module is readout else fan_in_mult(dims))
        if module is readout:
            module.weight.mul_(scale)
        if module.bias is not None:
            module.bias.mul_(scale)


class Scale(nn.Module):
    """x * factor: μP's readout multiplier, in front of the output layer (elementwise, so the fused sweep's
    batched forward applies it as it is)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"
