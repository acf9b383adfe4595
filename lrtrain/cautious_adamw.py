"""Cautious AdamW (Liang et al. 2024, "Cautious Optimizers: Improving Training with One Line of Code"): AdamW
whose update is zeroed where its sign disagrees with the gradient's, the kept coordinates scaled by
numel / kept. heavyball's AdamW with `caution=True` is that optimizer; this module is imported only when
optimizer=cautious_adamw is chosen, as heavyball imports torch._dynamo (seconds)."""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import heavyball
import heavyball.utils


class CautiousAdamW(heavyball.AdamW):
    """heavyball.AdamW(caution=True), run eagerly, its LR set by lrtrain's schedule before every step."""

    def __init__(self, params: Iterable[Any], *, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float = 0.0):
        # heavyball torch.compiles its update functions on first use, a process-wide switch: on a CPU the first
        # step compiled for 20 s and the later ones ran slower than eager. (trainer.compile compiles the model.)
        heavyball.utils.compile_mode = None
        # heavyball warns that an LR changed between steps is experimental except with multi_tensor=True, which
        # this is; every lrtrain schedule changes it, and heavyball takes each group's new LR as it is.
        warnings.filterwarnings("ignore", message="Learning rate changed between steps", module="heavyball")
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, caution=True,
                         multi_tensor=True)
