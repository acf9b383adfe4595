"""Durations with units: `5ep` (epochs), `500steps` (optimizer steps), `10%` (of the whole run).

A bare number means epochs. Every duration key of every group (step sizes, milestones, `T_max`, `T_0`,
`total`, warmup `length`, ...) is read through `Timeline.steps`, and turned into a schedule's clock (steps,
or epochs for `interval: epoch`) by `Timeline.tick`/`ticks`, so each rule is written once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ep|epochs?|steps?|%)?\s*$")
_UNITS = {None: "ep", "ep": "ep", "epoch": "ep", "epochs": "ep", "step": "steps", "steps": "steps", "%": "%"}


@dataclass(frozen=True)
class Duration:
    amount: float
    unit: str  # "ep", "steps" or "%"


def parse_duration(value: object) -> Duration:
    """Parse `5`, `5ep`, `2.5ep`, `500steps` or `10%`; raise ValueError saying what is valid."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 5 (epochs), 5ep, 500steps or 10%")
    if isinstance(value, (int, float)):
        value = str(value)
    match = _PATTERN.match(str(value))
    if not match:
        raise ValueError("a duration such as 5 (epochs), 5ep, 500steps or 10%")
    amount, unit = float(match.group(1)), _UNITS[match.group(2)]
    if unit == "steps" and not amount.is_integer():
        raise ValueError("a whole number of steps")
    if unit == "%" and amount > 100:
        raise ValueError("a percentage of at most 100%")
    return Duration(amount, unit)


@dataclass(frozen=True)
class Timeline:
    """How long the run is, in optimizer steps; what durations are measured against."""

    steps_per_epoch: int
    total_steps: int
    # The whole run, which `10%` is a fraction of, when total_steps is a part of it (a schedule after warmup).
    run_steps: Optional[int] = None

    def steps(self, value: object) -> int:
        """A duration in optimizer steps (rounded to the nearest step)."""
        d = value if isinstance(value, Duration) else parse_duration(value)
        if d.unit == "steps":
            return int(d.amount)
        if d.unit == "ep":
            return int(round(d.amount * self.steps_per_epoch))
        return int(round(d.amount / 100 * (self.run_steps or self.total_steps)))

    def every(self, value: object) -> int:
        """A period in optimizer steps: at least one."""
        return max(1, self.steps(value))

    def tick(self, step: int, interval: str) -> int:
        """The clock of a schedule stepped per `interval` at optimizer step `step`: the step, or the epoch."""
        return step if interval == "step" else step // self.steps_per_epoch

    def ticks(self, value: object, interval: str) -> int:
        """A duration on that clock: steps, or whole epochs (at least one) for interval=epoch."""
        steps = self.steps(value)
        return steps if interval == "step" else max(1, round(steps / self.steps_per_epoch))

    def total_ticks(self, interval: str) -> int:
        return self.total_steps if interval == "step" else math.ceil(self.total_steps / self.steps_per_epoch)
