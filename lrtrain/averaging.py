"""Weight averaging (`averaging=ema|swa`): torch's `AveragedModel` kept beside the trained model, updated every
`every` optimizer steps from `start` on, and evaluated beside the raw weights (metrics.csv's `avg_val_*`).

Batch-norm statistics, as torch documents them: EMA averages the buffers with the weights (`use_buffers=True`);
SWA averages the weights alone, and `update_bn` recomputes the statistics for the averaged weights (one pass over
the training set, its random numbers drawn from a forked generator so that training is unchanged) before each
evaluation of a model that has batch norm.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn


class Averager:
    """The averaged copy of `model`: `kind` ema (with `decay`) or swa, updated at steps start + k * every."""

    def __init__(self, model: nn.Module, kind: str, start: int, every: int, decay: Optional[float] = None):
        self.kind, self.start, self.every = kind, start, every
        if kind == "ema":
            self.model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        else:
            self.model = AveragedModel(model)
        self.has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    def after_step(self, step: int, model: nn.Module) -> None:
        """After optimizer step `step` (1-based: the steps done) of `model`."""
        if step >= self.start and (step - self.start) % self.every == 0:
            self.model.update_parameters(model)

    @property
    def started(self) -> bool:
        return bool(self.model.n_averaged)  # a host sync: read at validation points only

    def evaluated(self, train_inputs: Callable[[], Iterable[torch.Tensor]]) -> nn.Module:
        """The averaged model, ready to evaluate: for SWA with batch norm, its statistics recomputed over the
        `train_inputs()`."""
        if self.kind == "swa" and self.has_bn:
            with torch.random.fork_rng(devices=[]):  # update_bn runs in train mode: dropout would draw
                update_bn(train_inputs(), self.model)
        return self.model.module

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights as the model's own state dict (loadable into the model), and the count."""
        return {"model": self.model.module.state_dict(), "n_averaged": int(self.model.n_averaged)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.module.load_state_dict(state["model"])
        self.model.n_averaged.fill_(state["n_averaged"])


def averaged_metrics(row_metrics: list[str]) -> list[str]:
    """The averaged weights' columns of metrics.csv: avg_ before each validation metric."""
    return [f"avg_{m}" for m in row_metrics if m.startswith("val_")]


def train_inputs(data: Any, batches: Optional[int] = None) -> Callable[[], Iterable[torch.Tensor]]:
    """The training set's inputs in order, as update_bn reads them."""
    return lambda: (data.inputs(x) for x, _ in itertools.islice(data.eval_batches(data.train), batches))
