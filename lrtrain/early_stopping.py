"""Early stopping (the `early_stopping` group) and the divergence guard every option carries.

`EarlyStopping` (option `none`) never stops on a metric; `Patience` stops when the monitored metric stalls
(Keras/Lightning semantics); `Target` stops once it reaches a threshold. Both can keep the best weights and
restore them at the end. Every option holds a `DivergenceGuard`: a non-finite training loss (`check_finite`)
or one above `divergence_threshold` counts as divergence (the trainer's `on_divergence` decides what then).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch
from torch import nn


def improved(value: float, best: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    """True when `value` beats `best` by more than `min_delta` in the direction `mode`."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class DivergenceGuard:
    """A training loss that is non-finite (`check_finite`) or above `threshold` means the run diverged."""

    def __init__(self, check_finite: bool, threshold: Optional[float]):
        self.check_finite, self.threshold = check_finite, threshold

    def check(self, losses: Iterable[float]) -> Optional[tuple[int, str]]:
        """(index, reason) of the first loss that counts as divergence, or None."""
        for i, loss in enumerate(losses):
            if self.check_finite and not math.isfinite(loss):
                return i, f"the training loss became {loss}"
            if self.threshold is not None and loss > self.threshold:
                return i, f"the training loss {loss:.6g} exceeded divergence_threshold={self.threshold}"
        return None


class EarlyStopping:
    """Base class, and the `none` option: never stops on a metric."""

    monitor: Optional[str] = None
    restore_best_weights = False

    def __init__(self, check_finite: bool, divergence_threshold: Optional[float]):
        self.guard = DivergenceGuard(check_finite, divergence_threshold)
        self.best_weights: Optional[dict[str, torch.Tensor]] = None
        self.best_epoch: Optional[int] = None

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> Optional[str]:
        """Feed one epoch's metrics; return the stop reason, or None to go on."""
        return None

    def _value(self, metrics: dict[str, float]) -> float:
        if self.monitor not in metrics:
            raise KeyError(f"early_stopping.monitor={self.monitor!r}: not a logged metric; "
                           f"valid: {', '.join(sorted(metrics))}")
        return metrics[self.monitor]

    def _keep_best(self, epoch: int, model: nn.Module) -> None:
        self.best_epoch = epoch
        if self.restore_best_weights:
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # What changes while training; the settings come from the config, also on resume.
    _STATE = ("best", "wait", "best_epoch", "best_weights")

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._STATE if hasattr(self, k)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class Patience(EarlyStopping):
    """Stop after `patience` consecutive epochs whose `monitor` did not beat the best by more than
    `min_delta`. Epochs before `start_from_epoch` are not counted. With `baseline`, an epoch only resets the
    count if it also beats the baseline (Keras)."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float, baseline: Optional[float],
                 start_from_epoch: int, restore_best_weights: bool, check_finite: bool,
                 divergence_threshold: Optional[float]):
        super().__init__(check_finite, divergence_threshold)
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.baseline, self.start_from_epoch = baseline, start_from_epoch
        self.restore_best_weights = restore_best_weights
        self.best: Optional[float] = None
        self.wait = 0

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> Optional[str]:
        value = self._value(metrics)
        if epoch < self.start_from_epoch:
            return None
        self.wait += 1
        if improved(value, self.best, self.mode, self.min_delta):
            self.best = value
            self._keep_best(epoch, model)
            if self.baseline is None or improved(value, self.baseline, self.mode, self.min_delta):
                self.wait = 0
            return None
        if self.wait >= self.patience:
            return (f"{self.monitor} did not improve for {self.wait} epochs "
                    f"(best {self.best if self.best is not None else float('nan'):.6g})")
        return None


class Target(EarlyStopping):
    """Stop as soon as `monitor` reaches `stopping_threshold` (<= for mode min, >= for mode max)."""

    def __init__(self, monitor: str, mode: str, stopping_threshold: float, restore_best_weights: bool,
                 check_finite: bool, divergence_threshold: Optional[float]):
        super().__init__(check_finite, divergence_threshold)
        self.monitor, self.mode, self.stopping_threshold = monitor, mode, stopping_threshold
        self.restore_best_weights = restore_best_weights
        self.best: Optional[float] = None

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> Optional[str]:
        value = self._value(metrics)
        if improved(value, self.best, self.mode):
            self.best = value
            self._keep_best(epoch, model)
        reached = value <= self.stopping_threshold if self.mode == "min" else value >= self.stopping_threshold
        if reached:
            return f"{self.monitor} reached {value:.6g} (stopping_threshold={self.stopping_threshold})"
        return None
