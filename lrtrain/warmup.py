"""Warmup wraps any schedule: it ramps the LR up for `length` steps, then hands over to the schedule.

The wrapped schedule's clock starts when warmup ends (its step 0 is the first step after warmup, and its
"end of training" is the end of the run), which is what torch's `SequentialLR([warmup, schedule])` does.
Metric-driven schedules only start observing after warmup.
"""

from __future__ import annotations

from typing import Any

from lrtrain.schedules import Schedule


class Warmup:
    """Linear warmup: lr(step) = target * (start_factor + (1 - start_factor) * step / length) for step < length,
    where target is the schedule's first value; from step `length` on, lr(step) = schedule(step - length)."""

    def __init__(self, schedule: Schedule, length: int, start_factor: float):
        self.schedule, self.length, self.start_factor = schedule, length, start_factor

    @property
    def interval(self) -> str:
        return self.schedule.interval

    def factor(self, step: int) -> float:
        return self.start_factor + (1.0 - self.start_factor) * step / self.length

    def __call__(self, step: int, base_lr: float) -> float:
        if step < self.length:
            return self.factor(step) * self.schedule(0, base_lr)
        return self.schedule(step - self.length, base_lr)

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        self.schedule.observe(epoch, metrics)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)
