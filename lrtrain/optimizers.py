"""Optimizers: the torch.optim classes themselves, built by Hydra with lrtrain's parameter groups."""

from __future__ import annotations

from typing import Any

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
