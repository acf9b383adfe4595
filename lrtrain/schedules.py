"""Learning-rate schedules as pure functions of the optimizer-step counter.

A schedule answers `lr(step, base_lr)`: the learning rate of the 0-based optimizer step `step` for a
parameter group whose configured LR is `base_lr` (so per-group LRs scale with the same schedule, and the
absolute floors such as `eta_min` stay absolute, as in torch). The training loop owns the counter and asks
before every optimizer step; nothing here keeps hidden state except schedules driven by a metric.

`interval: step` evaluates the formula at every step; `interval: epoch` evaluates it at the epoch index and
holds it for the epoch, which is what a torch scheduler stepped once per epoch does.
"""

from __future__ import annotations

import math
from typing import Any

from lrtrain.durations import Timeline


class Schedule:
    """Base class: turns a step into the schedule's own clock (steps or epochs) and calls `value`."""

    def __init__(self, timeline: Timeline, interval: str = "step"):
        self.timeline = timeline
        self.interval = interval

    def ticks(self, duration: Any) -> int:
        """A duration in this schedule's clock units (steps, or whole epochs for interval=epoch)."""
        steps = self.timeline.steps(duration)
        if self.interval == "step":
            return steps
        return max(1, round(steps / self.timeline.steps_per_epoch))

    @property
    def total_ticks(self) -> int:
        if self.interval == "step":
            return self.timeline.total_steps
        return self.timeline.ceil_epochs(self.timeline.total_steps)

    def __call__(self, step: int, base_lr: float) -> float:
        t = step if self.interval == "step" else step // self.timeline.steps_per_epoch
        return self.value(t, base_lr)

    def value(self, t: int, base_lr: float) -> float:
        raise NotImplementedError

    # Metric-driven schedules (plateau) override these; pure ones have nothing to observe or save.
    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        """Called after each epoch's validation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class Constant(Schedule):
    """lr = base_lr."""

    def value(self, t: int, base_lr: float) -> float:
        return base_lr


class Step(Schedule):
    """lr = base_lr * gamma ** floor(t / step_size)   (torch StepLR)."""

    def __init__(self, timeline: Timeline, step_size: Any, gamma: float, interval: str = "step"):
        super().__init__(timeline, interval)
        self.step_size, self.gamma = self.ticks(step_size), gamma

    def value(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (t // self.step_size)


class Cosine(Schedule):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2   (torch CosineAnnealingLR)."""

    def __init__(self, timeline: Timeline, eta_min: float, T_max: Any = None, interval: str = "step"):
        super().__init__(timeline, interval)
        self.T_max = self.total_ticks if T_max is None else self.ticks(T_max)
        self.eta_min = eta_min

    def value(self, t: int, base_lr: float) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2
