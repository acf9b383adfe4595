"""Early stopping: Keras/Lightning patience semantics, target thresholds, best weights, from the CLI too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrtrain.early_stopping import EarlyStopping, Patience, Target


def patience(**kw) -> Patience:
    args = dict(monitor="val_loss", mode="min", patience=2, min_delta=0.0, baseline=None, start_from_epoch=0,
                restore_best_weights=False, check_finite=True, divergence_threshold=None)
    return Patience(**{**args, **kw})


def feed(stopper, values) -> int | None:
    """The epoch at which the stopper says stop, or None."""
    model = nn.Linear(1, 1)
    for epoch, v in enumerate(values):
        if stopper.update(epoch, {"val_loss": v, "val_acc": v}, model):
            return epoch
    return None


@pytest.mark.parametrize(
    "kw,values,stop_at",
    [
        ({}, [1.0, 0.9, 0.95, 0.97, 0.5], 3),  # two epochs in a row without improvement
        ({"patience": 0}, [1.0, 1.1], 1),
        ({}, [1.0, 0.9, 0.8, 0.7, 0.6], None),
        ({"min_delta": 0.15}, [1.0, 0.9, 0.88, 0.87], 2),  # not better than 1.0 by more than 0.15
        ({"mode": "max"}, [0.1, 0.2, 0.2, 0.19], 3),
        ({"start_from_epoch": 3}, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 5),  # epochs 0-2 not counted
        # Keras: an epoch that improves never stops the run, but only one past the baseline resets the count
        ({"baseline": 0.5}, [0.9, 0.8, 0.8, 0.7], 2),
        ({}, [0.9, 0.8, 0.8, 0.7], None),
        ({"baseline": 0.5}, [0.9, 0.4, 0.45, 0.46], 3),
    ],
)
def test_patience_follows_keras(kw, values, stop_at):
    assert feed(patience(**kw), values) == stop_at


def test_target_stops_once_reached_in_either_mode():
    target = dict(restore_best_weights=False, check_finite=True, divergence_threshold=None)
    assert feed(Target("val_acc", "max", 0.9, **target), [0.5, 0.89, 0.9, 0.95]) == 2
    assert feed(Target("val_loss", "min", 0.2, **target), [0.5, 0.3, 0.19]) == 2


def test_divergence_is_the_first_bad_loss():
    s = EarlyStopping(check_finite=True, divergence_threshold=10.0)
    assert s.guard.check([1.0, 2.0]) is None
    assert s.guard.check([1.0, float("nan"), 20.0])[0] == 1
    assert s.guard.check([1.0, 11.0, float("inf")])[0] == 1
    assert EarlyStopping(check_finite=False, divergence_threshold=None).guard.check([float("nan")]) is None


def test_best_weights_are_a_copy_and_survive_state_dict():
    model = nn.Linear(2, 1)
    s = patience(restore_best_weights=True)
    s.update(0, {"val_loss": 1.0}, model)
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    s.update(1, {"val_loss": 2.0}, model)
    assert torch.equal(s.best_weights["weight"], saved) and s.best_epoch == 0
    other = patience(restore_best_weights=True)
    other.load_state_dict(s.state_dict())
    assert other.wait == 1 and torch.equal(other.best_weights["weight"], saved)


def test_patience_stops_a_real_run_and_says_why(lrtrain):
    # No later epoch can beat the first val_loss (~1.0) by more than 1.0: stops after `patience` epochs.
    r = lrtrain("early_stopping=patience", "early_stopping.patience=2", "early_stopping.min_delta=1.0",
                "trainer.max_epochs=10", "trainer.progress=plain", "logger.csv.plots=false")
    assert r.returncode == 0, r.stderr
    summary = r.summary()
    assert summary["status"] == "early_stopped" and "did not improve for 2 epochs" in summary["stop_reason"]
    assert summary["epochs"] == 3 and len(r.csv("metrics.csv")) == 3
    assert "stop reason" in r.stdout


def test_target_with_restored_best_weights(lrtrain):
    r = lrtrain("early_stopping=target", "early_stopping.stopping_threshold=0.9",
                "early_stopping.restore_best_weights=true", "trainer.max_epochs=10", "trainer.progress=none",
                "logger.csv.plots=false")
    assert r.returncode == 0, r.stderr
    summary = r.summary()
    accs = [float(m["val_acc"]) for m in r.csv("metrics.csv")]
    assert summary["status"] == "early_stopped" and accs[-1] >= 0.9 > max(accs[:-1])
    assert summary["restored_best_weights_from_epoch"] == len(accs) - 1
