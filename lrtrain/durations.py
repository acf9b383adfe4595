"""Durations with units: `5ep` (epochs), `500steps` (optimizer steps), `10%` (of the whole run).

A bare number means epochs. Every duration key of every group (step sizes, milestones, `T_max`, `T_0`,
`total`, warmup `length`, ...) is read through `Timeline.steps`, so the rule is written once.
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

    @property
    def total_epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch

    def steps(self, value: object) -> int:
        """A duration in optimizer steps (rounded to the nearest step)."""
        d = value if isinstance(value, Duration) else parse_duration(value)
        if d.unit == "steps":
            return int(d.amount)
        if d.unit == "ep":
            return int(round(d.amount * self.steps_per_epoch))
        return int(round(d.amount / 100 * (self.run_steps or self.total_steps)))

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def ceil_epochs(self, steps: int) -> int:
        return math.ceil(steps / self.steps_per_epoch)
