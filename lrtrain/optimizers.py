"""Optimizers: the torch.optim classes themselves, built by Hydra with lrtrain's parameter groups.

Weight decay (regularization=l2) reaches the optimizer through its parameter groups. Coupled decay is the
optimizer's own `weight_decay` (g <- g + wd * p). Decoupled decay is p <- p * (1 - lr * wd) before each
update: torch's own flag where the class has one (`decoupled_weight_decay` on Adam, NAdam, RAdam; AdamW always
decouples), else a step pre-hook (`decoupled_decay`) that does exactly that, with the group's current LR.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_1d: bool) -> list[dict[str, Any]]:
    """Two groups: decayed weights (>= 2-D) and, unless `decay_1d`, undecayed biases and norm parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if weight_decay == 0 or decay_1d:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def always_decoupled(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, torch.optim.AdamW)


def make_optimizer(factory: Callable[..., torch.optim.Optimizer], groups: list[dict[str, Any]],
                   decoupled: bool) -> torch.optim.Optimizer:
    """`factory(groups)` (a Hydra partial of an optimizer class), with decoupled decay when asked for."""
    cls = getattr(factory, "func", factory)
    if not decoupled or always_decoupled(cls):
        return factory(groups)
    try:
        native = "decoupled_weight_decay" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        native = False
    if native:
        return factory(groups, decoupled_weight_decay=True)
    # The optimizer sees no decay; the hook applies it. Groups keep the value under their own key so that it is
    # saved with the optimizer's state and visible in optimizer.param_groups.
    groups = [{**g, "decoupled_decay": g.get("weight_decay", 0.0), "weight_decay": 0.0} for g in groups]
    optimizer = factory(groups)
    optimizer.register_step_pre_hook(_decoupled_decay)
    return optimizer


@torch.no_grad()
def _decoupled_decay(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for group in optimizer.param_groups:
        wd = group.get("decoupled_decay", 0.0)
        params = [p for p in group["params"] if p.grad is not None]
        if wd and params:
            torch._foreach_mul_(params, 1 - group["lr"] * wd)
