"""The task object: one rule for the loss and the correct predictions, for the step, evaluation and the fused
step, over any leading dimensions; a task with several targets per sample is one small subclass."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrtrain.loop import evaluate_outputs
from lrtrain.tasks import Classification, Regression, task_for


class Tokens(Classification):
    """A language model's task, as a subclass would write it: [B, T, V] logits against [B, T] token ids."""

    target_dims = 1

    def derive(self, loss: float) -> dict[str, float]:
        return {"bpc": loss / math.log(2), "ppl": math.exp(loss)}


def test_classification_is_torchs_cross_entropy_with_its_label_smoothing():
    gen = torch.Generator().manual_seed(0)
    out, y = torch.randn(8, 5, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    task = task_for(5, label_smoothing=0.1)
    assert torch.equal(task.loss(out, y), nn.CrossEntropyLoss(label_smoothing=0.1)(out, y))
    assert torch.equal(task.losses(out, y), F.cross_entropy(out, y, reduction="none"))  # evaluation: no smoothing
    assert torch.equal(task.hits(out, y), out.argmax(1) == y)
    # one epsilon per replica (the fused step): each row as torch smooths it
    eps = torch.tensor([0.0, 0.1, 0.3])
    stacked = task.losses(out.expand(3, 8, 5), y.expand(3, 8), eps)
    for r, e in enumerate(eps.tolist()):
        torch.testing.assert_close(stacked[r], F.cross_entropy(out, y, reduction="none", label_smoothing=e))


def test_regression_is_mse_on_the_squeezed_output():
    out, y = torch.randn(6, 1), torch.randn(6)
    task = task_for(None)
    assert isinstance(task, Regression) and not task.classify and task.hits(out, y) is None
    assert torch.equal(task.loss(out, y), F.mse_loss(out.squeeze(-1), y))
    assert task.row_metrics() == ["train_loss", "val_loss"]


def test_a_sequence_task_scores_every_token():
    gen = torch.Generator().manual_seed(1)
    out, y = torch.randn(4, 7, 11, generator=gen), torch.randint(0, 11, (4, 7), generator=gen)
    task = Tokens()
    assert torch.equal(task.loss(out, y), F.cross_entropy(out.reshape(28, 11), y.reshape(28)))  # over B*T
    assert task.sample_losses(out, y).shape == (4,)  # the fused step's per-sample losses
    assert task.row_metrics() == ["train_loss", "val_loss", "train_acc", "val_acc", "val_bpc", "val_ppl"]
    # evaluation: the mean over every token of the split, with the derived metrics
    data = types.SimpleNamespace(eval_batches=lambda split: iter([(out[:2], y[:2]), (out[2:], y[2:])]),
                                 inputs=lambda x: x)
    [scores] = evaluate_outputs(lambda x: x.unsqueeze(0), None, data, torch.autocast("cpu", enabled=False), task)
    loss = F.cross_entropy(out.reshape(28, 11), y.reshape(28), reduction="sum").item() / 28
    assert scores["loss"] == pytest.approx(loss, rel=1e-6)
    assert scores["acc"] == (out.argmax(-1) == y).sum().item() / 28
    assert scores["bpc"] == pytest.approx(loss / math.log(2), rel=1e-6)
    assert scores["ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
