"""The steps taken since the last flush, and the rows of steps.csv they become. Their losses, correct counts and
gradient norms stay on the device until the flush reads them all at once (one host sync), so a step costs a few
list appends here."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch

from lrtrain.step import StepResult


class Taken(NamedTuple):
    losses: torch.Tensor  # [n] float
    correct: torch.Tensor  # the steps' correct predictions, summed (0 when not classifying)
    norms: Optional[torch.Tensor]  # [n] gradient norms before clipping, with grad_clip
    lrs: list[float]
    effective: list[float]  # learned step sizes, with Prodigy and D-Adaptation
    momenta: list[float]  # with a schedule that cycles momentum


class Flushed(NamedTuple):
    """The pending steps, read back."""

    rows: list[list[Any]]  # steps.csv's rows, up to the step that diverged when one did
    losses: list[float]
    correct: int
    last_lr: float
    effective_lr: Optional[float]  # the learned step size at the last row's step
    diverged: Optional[tuple[int, str]]  # the first step that diverged, and why


class Pending:
    """`add` one step's result; `flush` them all into rows for steps.csv, whose `columns` say which
    optional values a step has: the gradient norm (`clip`), the rollbacks so far (`rollback`), the learned step
    size (`learns_lr`), a cycled momentum (`cycles_momentum`).

    `stack` and `column` read a fused group's results: each step's tensors are the group's [K] ones, stacked
    once for every replica (`stack`) and sliced to its `column`."""

    def __init__(self, clip: bool, rollback: bool, learns_lr: bool, cycles_momentum: bool,
                 stack: Callable[[list[torch.Tensor]], torch.Tensor] = torch.stack, column: Optional[int] = None):
        self.rollback, self.stack, self.column = rollback, stack, column
        self.columns = (["step", "epoch", "lr", "loss"] + ["grad_norm"] * clip + ["rollbacks"] * rollback
                        + ["effective_lr"] * learns_lr + ["momentum"] * cycles_momentum)
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

    def flush(self, first: int, epoch: int, guard: Any, every: int, rollbacks: int, dist: Any = None) -> Flushed:
        """Read back the pending steps, step `first` on (one host sync), and empty the buffer: steps.csv's rows
        of every `every`-th step, up to the first that the divergence `guard` finds diverged (its row kept).
        Under ddp (`dist`): the ranks' mean loss and summed correct predictions, so every rank decides alike."""
        taken = self._take(dist)
        losses, correct = taken.losses.tolist(), int(taken.correct)
        diverged = guard.check(losses)
        count = len(losses) if diverged is None else diverged[0] + 1
        norms = taken.norms.tolist() if taken.norms is not None else []
        extra = [rollbacks] if self.rollback else []
        rows = [[first + j, epoch, taken.lrs[j], losses[j], *norms[j:j + 1], *extra, *taken.effective[j:j + 1],
                 *taken.momenta[j:j + 1]] for j in range(count) if (first + j) % every == 0]
        return Flushed(rows, losses, correct, taken.lrs[-1], taken.effective[count - 1] if taken.effective else None,
                       None if diverged is None else (first + diverged[0], diverged[1]))

    def _take(self, dist: Any) -> Taken:
        """The pending steps, still on the device; the buffer is emptied."""
        losses = self._read(self.losses).float()
        correct = self._read(self.correct).sum() if self.correct else torch.zeros(())
        if dist is not None:
            losses, correct = dist.mean(losses), dist.sum(correct)
        norms = self._read(self.norms).float() if self.norms else None
        taken = Taken(losses, correct, norms, self.lrs, self.effective, self.momenta)
        self.clear()
        return taken

    def _read(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        stacked = self.stack(tensors)
        return stacked if self.column is None else stacked[:, self.column]
