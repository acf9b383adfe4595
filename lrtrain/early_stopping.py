"""Early stopping on a monitored metric (the Keras/Lightning `patience` semantics)."""

from __future__ import annotations

import math
from typing import Any, Optional


def improved(value: float, best: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    """True when `value` beats `best` by more than `min_delta` in the direction `mode`."""
    if best is None:
        return math.isfinite(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` consecutive epochs."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: Optional[float] = None
        self.bad_epochs = 0

    def update(self, metrics: dict[str, float]) -> Optional[str]:
        """Feed one epoch's metrics; return the stop reason, or None to go on."""
        if self.monitor not in metrics:
            raise KeyError(f"early_stopping.monitor={self.monitor!r}: not a logged metric; "
                           f"valid: {', '.join(sorted(metrics))}")
        value = metrics[self.monitor]
        if improved(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
            return None
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            return (f"{self.monitor} did not improve by more than {self.min_delta} "
                    f"for {self.bad_epochs} epochs (best {self.best:.6g})")
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
