"""Optimizers: the torch.optim classes (or well-kept packages' classes) themselves, built by Hydra with
lrtrain's parameter groups, and the few helpers the loop calls whatever the optimizer is.

Weight decay (regularization=l2) reaches the optimizer through its parameter groups. Coupled decay is the
optimizer's own `weight_decay` (g <- g + wd * p). Decoupled decay is p <- p * (1 - lr * wd) before each
update: the class's own flag where it has one (`decoupled_weight_decay` on torch's Adam, NAdam, RAdam;
`decouple` on Prodigy and D-Adapt Adam; `weight_decouple` on pytorch-optimizer's), else a step pre-hook
(`decoupled_decay`) that does exactly that, with the group's current LR. Some classes only decouple (`DECOUPLED_BY_DESIGN`): for them the flag changes nothing.

Schedule-free optimizers (`train_mode`/`eval_mode`) keep two sequences: training steps are taken at an
interpolation y, while the weights to evaluate and save are the average x. The loop switches them with the
helpers below, which do nothing for every other optimizer.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections import ChainMap
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from lrtrain.errors import OptimizerInputError
from lrtrain.regularization import is_weight

# Classes (or their bases) whose own weight decay is already decoupled from the gradient statistics: AdamW's
# p <- p (1 - lr wd) (torch AdamW, Adafactor, Muon, Lion), or, schedule-free, a decay term that no moment
# estimate or momentum buffer sees. `regularization.l2.decoupled` has nothing to switch for them. Named by
# (top-level package, class name), which does not move when a package reorganises its modules.
DECOUPLED_BY_DESIGN = frozenset({
    ("torch", "AdamW"), ("torch", "Adafactor"), ("torch", "Muon"), ("lion_pytorch", "Lion"),
    ("schedulefree", "AdamWScheduleFree"), ("schedulefree", "SGDScheduleFree"), ("lrtrain", "MuonWithAdamW"),
    ("pytorch_optimizer", "SOAP"), ("heavyball", "AdamW"),
})
# The keyword each class family uses to switch decoupled decay on, in the order they are looked for.
_DECOUPLE_FLAGS = ("decoupled_weight_decay", "decouple", "weight_decouple")  # torch; Prodigy, D-Adapt; pytorch-optimizer


def param_groups(model: nn.Module, weight_decay: float, decay_1d: bool) -> list[dict[str, Any]]:
    """Two groups: decayed weights (>= 2-D) and, unless `decay_1d`, undecayed biases and norm parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if weight_decay == 0 or decay_1d:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if is_weight(p)]
    no_decay = [p for p in params if not is_weight(p)]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def always_decoupled(cls: Any) -> bool:
    return isinstance(cls, type) and any((c.__module__.split(".")[0], c.__name__) in DECOUPLED_BY_DESIGN
                                         for c in cls.__mro__)


def make_optimizer(factory: Callable[..., Any], groups: list[dict[str, Any]], decoupled: bool) -> Any:
    """`factory(groups)` (a Hydra partial of an optimizer class), with decoupled decay when asked for."""
    cls = getattr(factory, "func", factory)
    if always_decoupled(cls):
        return _quietly(factory, groups)
    try:
        names = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        names = {}
    flag = next((f for f in _DECOUPLE_FLAGS if f in names), None)
    if flag is not None:  # the class's own switch, set both ways (Prodigy's default is on)
        return _quietly(factory, groups, **{flag: decoupled})
    if not decoupled:
        return _quietly(factory, groups)
    # The optimizer sees no decay; the hook applies it. Groups keep the value under their own key so that it is
    # saved with the optimizer's state and visible in optimizer.param_groups.
    groups = [{**g, "decoupled_decay": g.get("weight_decay", 0.0), "weight_decay": 0.0} for g in groups]
    optimizer = _quietly(factory, groups)
    optimizer.register_step_pre_hook(_decoupled_decay)
    return optimizer


def _quietly(factory: Callable[..., Any], groups: list[dict[str, Any]], **kwargs: Any) -> Any:
    # Prodigy and D-Adaptation print "Using decoupled weight decay" when built; the config already says so.
    with contextlib.redirect_stdout(io.StringIO()):
        return factory(groups, **kwargs)


@torch.no_grad()
def _decoupled_decay(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for group in optimizer.param_groups:
        wd = group.get("decoupled_decay", 0.0)
        params = [p for p in group["params"] if p.grad is not None]
        if wd and params:
            torch._foreach_mul_(params, 1 - group["lr"] * wd)


# ------------------------------------------------------------------------------- what the loop asks of any


def train_mode(optimizer: Any) -> None:
    """Before training steps: a schedule-free optimizer moves the weights to where gradients are taken."""
    switch = getattr(optimizer, "train", None)
    if callable(switch):
        switch()


def eval_mode(optimizer: Any) -> None:
    """Before validation, test, checkpoints and the final weights: a schedule-free optimizer puts the averaged
    weights in the model. A no-op for optimizers without modes, and when already in eval mode."""
    switch = getattr(optimizer, "eval", None)
    if callable(switch):
        switch()


def has_modes(optimizer: Any) -> bool:
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


# Packages whose optimizers learn the step size: d (their estimate of the distance to the solution) times lr.
LEARNED_LR_PACKAGES = ("prodigyopt", "dadaptation")


def learns_lr(optimizer: Any) -> bool:
    return type(optimizer).__module__.split(".")[0] in LEARNED_LR_PACKAGES


def effective_lr(optimizer: Any) -> Optional[float]:
    """The step size the next step will use where the optimizer learns one: d * lr for Prodigy and
    D-Adaptation (d is a Python float there: no host sync). None for every other optimizer."""
    if not learns_lr(optimizer):
        return None
    group = optimizer.param_groups[0]
    return group["d"] * group["lr"]


def momentum_key(group: dict[str, Any]) -> Optional[str]:
    """What a cycled momentum sets in a parameter group: `betas` (beta1, as torch's CyclicLR/OneCycleLR do
    for Adam-like optimizers) or `momentum`; None for optimizers with neither."""
    if "betas" in group:
        return "betas"
    return "momentum" if "momentum" in group else None


def set_momentum(optimizer: Any, value: float) -> None:
    """Set every parameter group's momentum (or beta1) to `value`, as torch's cycling schedulers do."""
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value


# ------------------------------------------------------------------------------------------------- Muon


class MuonWithAdamW:
    """torch.optim.Muon for the 2-D hidden weights, torch.optim.AdamW for every other parameter, stepped as one.

    Muon orthogonalises each matrix's update, which has a meaning for 2-D weights only (torch's Muon refuses
    any other shape). Biases, norm gains, convolution kernels (4-D), ViT's class token and position embedding
    go to AdamW; so does the output layer (the last 2-D weight in the model's parameter order, every lrtrain
    model's head) unless `head_to_adamw` is false, as Keller Jordan recommends. With `adjust_lr_fn:
    match_rms_adamw` (Moonshot's rule) Muon's updates have AdamW's RMS, so one LR serves both parts: the AdamW
    part takes `lr` unless `adamw_lr` is set. Each parameter group of lrtrain (decayed weights, undecayed 1-D
    parameters) is split in two, keeping its weight decay (from regularization=[l2]; `weight_decay` is for
    use outside lrtrain), so the schedule scales every group alike. Defaults: `configs/optimizer/muon.yaml`.
    """

    def __init__(self, params: Iterable[Any], *, lr: float, momentum: float, nesterov: bool,
                 ns_coefficients: tuple[float, float, float], eps: float, ns_steps: int,
                 adjust_lr_fn: Optional[str], adamw_lr: Optional[float], adamw_betas: tuple[float, float],
                 adamw_eps: float, head_to_adamw: bool, weight_decay: float = 0.0):
        groups = list(params)
        if groups and isinstance(groups[0], torch.Tensor):
            groups = [{"params": groups}]
        matrices = [p for g in groups for p in g["params"] if p.dim() == 2]
        head = matrices[-1] if head_to_adamw and matrices else None
        to_muon = {id(p) for p in matrices if p is not head}
        if not to_muon:
            raise OptimizerInputError("Muon needs 2-D hidden weights, and this model has none besides its output layer")
        muon_groups = [{**g, "params": [p for p in g["params"] if id(p) in to_muon]} for g in groups]
        adamw_groups = [{**g, "params": [p for p in g["params"] if id(p) not in to_muon]} for g in groups]
        self.muon = torch.optim.Muon([g for g in muon_groups if g["params"]], lr=lr, weight_decay=weight_decay,
                                     momentum=momentum, nesterov=nesterov, ns_coefficients=tuple(ns_coefficients),
                                     eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        adamw_groups = [{**g, "lr": adamw_lr} if adamw_lr is not None else g for g in adamw_groups if g["params"]]
        self.adamw = (torch.optim.AdamW(adamw_groups, lr=lr, betas=tuple(adamw_betas), eps=adamw_eps,
                                        weight_decay=weight_decay) if adamw_groups else None)

    @property
    def _parts(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Muon's groups, then AdamW's: the dicts themselves, so setting a group's lr reaches its optimizer."""
        return [g for o in self._parts for g in o.param_groups]

    @property
    def defaults(self) -> dict[str, Any]:
        return self.muon.defaults

    @property
    def state(self) -> ChainMap:
        return ChainMap(*(o.state for o in self._parts))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self._parts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self._parts:
            o.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.muon.load_state_dict(state["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state["adamw"])

    def __repr__(self) -> str:
        return f"MuonWithAdamW(muon={self.muon!r}, adamw={self.adamw!r})"
