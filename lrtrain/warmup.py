"""Warmup wraps any schedule: it scales the LR for `length` steps, then hands over to the schedule.

The wrapped schedule's clock starts when warmup ends (its step 0 is the first step after warmup, and its
"end of training" is the end of the run), which is what torch's `SequentialLR([warmup, schedule],
milestones=[length])` does. During warmup the LR is `factor(t) * schedule(0)`, so the ramp ends exactly on the
schedule's first value: step `length` runs at `schedule(0)`, with no jump and no overshoot. Only
`start_factor = 0` makes step 0 run at LR 0. Metric-driven schedules (plateau) only see epochs that end after
warmup, so their patience starts counting there.

With `interval: epoch` the warmup is stepped per epoch too (its length is then a whole number of epochs), as
the torch pair stepped once per epoch would be.
"""

from __future__ import annotations

from typing import Any, Optional

from lrtrain.schedules import Schedule


class Warmup:
    """Base class: lr(step) = factor(t) * schedule(0) while t < length, then schedule(step - length)."""

    def __init__(self, schedule: Schedule, length: int, start_factor: float):
        self.schedule, self.length, self.start_factor = schedule, length, start_factor
        self.timeline = schedule.timeline
        # length in the schedule's clock (steps, or epochs for interval=epoch)
        self.ticks = self.timeline.ticks(f"{length}steps", schedule.interval)

    @property
    def interval(self) -> str:
        return self.schedule.interval

    def factor(self, t: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int, base_lr: float) -> float:
        if step < self.length:
            return self.factor(self.timeline.tick(step, self.interval)) * self.schedule(0, base_lr)
        return self.schedule(step - self.length, base_lr)

    def momentum(self, step: int) -> Optional[float]:
        return self.schedule.momentum(max(0, step - self.length))

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        if metrics["step"] > self.length:  # the epoch ended after warmup
            self.schedule.observe(epoch, metrics)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)


class LinearWarmup(Warmup):
    """factor = start_factor + (1 - start_factor) * (t + offset) / (length + offset).

    offset 0 is torch's LinearLR(start_factor, total_iters=length): step 0 runs at start_factor * lr. offset 1
    counts the step being taken, as nanoGPT's `lr * (it + 1) / (warmup + 1)` does (with start_factor 0): step 0
    already moves the weights, and the ramp still ends on the schedule's first value at step `length`.
    """

    def __init__(self, schedule: Schedule, length: int, start_factor: float, offset: int):
        super().__init__(schedule, length, start_factor)
        self.offset = offset

    def factor(self, t: int) -> float:
        return self.start_factor + (1.0 - self.start_factor) * (t + self.offset) / (self.ticks + self.offset)


class ExponentialWarmup(Warmup):
    """factor = start_factor ** (1 - t / length): a geometric ramp, the same ratio every step."""

    def factor(self, t: int) -> float:
        return self.start_factor ** (1.0 - t / self.ticks)


class ConstantWarmup(Warmup):
    """factor = start_factor   (torch ConstantLR(factor=start_factor, total_iters=length))."""

    def factor(self, t: int) -> float:
        return self.start_factor
