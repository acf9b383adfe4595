"""The steps taken since the last flush. Their losses, correct counts and gradient norms stay on the device until
the flush reads them all at once (one host sync), so a step costs a few list appends here."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from lrtrain.step import StepResult


class Taken(NamedTuple):
    losses: torch.Tensor  # [n] float
    correct: torch.Tensor  # the steps' correct predictions, summed (0 when not classifying)
    norms: Optional[torch.Tensor]  # [n] gradient norms before clipping, with grad_clip
    lrs: list[float]
    effective: list[float]  # learned step sizes, with Prodigy and D-Adaptation
    momenta: list[float]  # with a schedule that cycles momentum


class Pending:
    """`add` one step's result; `take` them all as tensors. `stack` and `column` read a fused group's results:
    each step's tensors are the group's [K] ones, stacked once for every replica (`stack`) and sliced to its
    `column`."""

    def __init__(self, stack: Callable[[list[torch.Tensor]], torch.Tensor] = torch.stack,
                 column: Optional[int] = None):
        self.stack, self.column = stack, column
        self.clear()

    def clear(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []
        self.lrs: list[float] = []
        self.effective: list[float] = []
        self.momenta: list[float] = []

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, result: StepResult, lr: float, momentum: Optional[float]) -> None:
        self.losses.append(result.loss)
        self.lrs.append(lr)
        if result.correct is not None:
            self.correct.append(result.correct)
        if result.grad_norm is not None:
            self.norms.append(result.grad_norm)
        if result.effective_lr is not None:
            self.effective.append(result.effective_lr)
        if momentum is not None:
            self.momenta.append(momentum)

    def take(self) -> Taken:
        """The pending steps, still on the device; the buffer is emptied."""
        correct = self._read(self.correct).sum() if self.correct else torch.zeros(())
        norms = self._read(self.norms).float() if self.norms else None
        taken = Taken(self._read(self.losses).float(), correct, norms, self.lrs, self.effective, self.momenta)
        self.clear()
        return taken

    def _read(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        stacked = self.stack(tensors)
        return stacked if self.column is None else stacked[:, self.column]
