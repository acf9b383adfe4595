"""What a model's outputs are scored by: the loss and the correct predictions, for the training step, evaluation
and the fused step alike.

An output's last dimension holds the classes (or a regression's one value) and its target has the output's other
dimensions, so leading ones pass through: a fused group's replicas [K, B, ...] as well as one model's batch [B].
A task whose samples have several targets (a language model's [B, T] tokens) sets `target_dims`; its loss is
then the mean over every target, and `derive` adds the metrics read off that mean (bits per character, ...).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


class Task:
    """Base class: the interface the step, evaluation and the fused step use."""

    classify = False
    target_dims = 0  # dimensions of one sample's target (0: one value per sample; a token sequence: 1)
    targets_per_sample = 1  # what accuracy is counted over: a language model's tokens

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean training loss over every target (with the task's label smoothing)."""
        raise NotImplementedError

    def losses(self, out: torch.Tensor, y: torch.Tensor, smoothing: float | torch.Tensor = 0.0) -> torch.Tensor:
        """Each target's loss, shaped as `y`. Evaluation scores the plain loss (`smoothing` 0); the fused step
        passes one label smoothing per replica."""
        raise NotImplementedError

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        """Each target's correct prediction (a bool tensor shaped as `y`), when classifying."""
        return None

    def sample_losses(self, out: torch.Tensor, y: torch.Tensor,
                      smoothing: float | torch.Tensor = 0.0) -> torch.Tensor:
        """Each sample's mean loss over its targets: `y`'s shape without the target dimensions."""
        per_target = self.losses(out, y, smoothing)
        return per_target.flatten(-self.target_dims).mean(-1) if self.target_dims else per_target

    def derive(self, loss: float) -> dict[str, float]:
        """Metrics computed from the mean validation loss, named without their `val_` prefix."""
        return {}

    def row_metrics(self) -> list[str]:
        """The metrics of a validation row, in metrics.csv's order (what trainer.monitor and early stopping can
        name): the training and validation loss (and accuracy), then the derived validation metrics."""
        return ["train_loss", "val_loss", *(["train_acc", "val_acc"] if self.classify else []),
                *[f"val_{k}" for k in self.derive(1.0)]]


class Regression(Task):
    """Mean squared error on the model's one output."""

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out.squeeze(-1), y)

    def losses(self, out: torch.Tensor, y: torch.Tensor, smoothing: float | torch.Tensor = 0.0) -> torch.Tensor:
        return F.mse_loss(out.squeeze(-1), y, reduction="none")


class Classification(Task):
    """Cross-entropy over the output's last dimension (with label smoothing when set), accuracy by argmax."""

    classify = True

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.flatten(0, -2), y.flatten(), label_smoothing=self.label_smoothing)

    def losses(self, out: torch.Tensor, y: torch.Tensor, smoothing: float | torch.Tensor = 0.0) -> torch.Tensor:
        if not isinstance(smoothing, torch.Tensor):
            return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="none",
                                   label_smoothing=smoothing).view(y.shape)
        # one epsilon per leading row, as torch smooths: (1 - eps) * nll + eps * mean over classes of -log p
        logp = out.float().log_softmax(-1)
        nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        eps = smoothing.view(-1, *[1] * (y.dim() - 1))
        return nll * (1 - eps) + (-logp.mean(-1)) * eps

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return out.argmax(-1) == y


class LanguageModel(Classification):
    """Next-token prediction: logits [B, T, V] for targets [B, T]; the loss in nats per token, accuracy per
    token, and the validation loss also as bits per character (or byte) and perplexity."""

    target_dims = 1

    def __init__(self, block_size: int, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        self.targets_per_sample = block_size

    def derive(self, loss: float) -> dict[str, float]:
        return {"bpc": loss / math.log(2), "ppl": math.exp(loss) if loss < 700 else math.inf}


def task_for(num_classes: Optional[int], label_smoothing: float = 0.0, block_size: Optional[int] = None) -> Task:
    """The task of a data set with `num_classes` classes (None: regression); `block_size`: a language model's
    windows of that many tokens."""
    if block_size is not None:
        return LanguageModel(block_size, label_smoothing)
    return Classification(label_smoothing) if num_classes is not None else Regression()
