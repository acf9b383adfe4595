"""One optimizer step, exactly as training takes it. The loop and the LR range test both call it, so the LR the
range test suggests is measured on the step the run then trains with (augmentation, L1, clipping, bf16)."""

from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from lrtrain.errors import ConfigValueError
from lrtrain.optimizers import effective_lr, set_momentum
from lrtrain.regularization import StepHooks
from lrtrain.tasks import Task


class StepResult(NamedTuple):
    loss: torch.Tensor  # the data loss (without a penalty), on the device: no host sync here
    correct: Optional[torch.Tensor]  # correct predictions in the batch, when classifying
    grad_norm: Optional[torch.Tensor]  # the gradients' norm before clipping, when clipping
    effective_lr: Optional[float]  # the step size it took, where the optimizer learns one (Prodigy: d * lr)


class TrainStep:
    """set the LRs (and a cycled momentum) -> augment -> forward (torch.compile'd with trainer.compile) under autocast -> loss (+ penalty) -> backward -> clip -> optimizer step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, data,
                 hooks: StepHooks, precision: str, device: torch.device, compile: bool = False):
        self.optimizer, self.task, self.data, self.hooks = optimizer, task, data, hooks
        # trainer.compile: the forward pass goes through torch.compile (it shares the model's parameters, so
        # checkpoints, evaluation and the optimizer see the plain module); the first call compiles
        self.forward = torch.compile(model) if compile else model
        self.compiling = compile
        if compile:  # inductor looks for CUDA on every machine and warns where there is none
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self.learns_lr = effective_lr(optimizer) is not None
        self.amp = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())

    def __call__(self, stored: torch.Tensor, y: torch.Tensor, lrs: Sequence[float],
                 momentum: Optional[float] = None) -> StepResult:
        """One step on the stored batch with `lrs[i]` as the LR of parameter group i (and `momentum`, or
        Adam's beta1, for every group when a schedule cycles it)."""
        opt, hooks = self.optimizer, self.hooks
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
        if momentum is not None:
            set_momentum(opt, momentum)
        step_size = effective_lr(opt) if self.learns_lr else None  # before step(): d changes inside it
        if hooks.augment is not None:
            stored = hooks.augment(stored)
        with self.amp:
            output = self._forward(self.data.inputs(stored))
            loss = self.task.loss(output, y)
        opt.zero_grad(set_to_none=True)
        (loss + hooks.penalty() if hooks.penalty is not None else loss).backward()  # logged: the data loss
        norm = hooks.clip() if hooks.clip is not None else None
        opt.step()
        correct = self.task.hits(output, y).sum() if self.task.classify else None
        return StepResult(loss.detach(), correct, norm, step_size)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compiling:
            return self.forward(x)
        from torch._dynamo.exc import TorchDynamoException

        try:  # the first call compiles: a failure there (no C++ compiler, an unsupported op) is the option's
            output = self.forward(x)
        except TorchDynamoException as e:
            reason = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise ConfigValueError("trainer.compile", True, f"false here: torch.compile failed: {reason}") from None
        self.compiling = False
        return output
