"""Regularization: every option (and all of them together) trains and does what it says; bad values fail first."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import config_error, FAST, REPO, group_options, loss_fell
from lrtrain.regularization import BatchAugment, FlipError, GradClip, L1Penalty

OPTIONS = group_options("regularization")


def _no_decay(run, rows):
    return all(g["weight_decay"] == 0 for g in run.optimizer.param_groups)


# What each option must visibly change in the built run (and the steps.csv it wrote); `none` changes nothing.
EFFECTS = {
    "none": lambda run, rows: (_no_decay(run, rows) and run.hooks.augment is None
                               and run.hooks.penalty is None and run.hooks.clip is None
                               and run.task.label_smoothing == 0
                               and not any(isinstance(m, nn.Dropout) for m in run.model.modules())
                               and "grad_norm" not in rows[0]),
    "l2": lambda run, rows: [g["weight_decay"] for g in run.optimizer.param_groups] == [0.0005, 0.0],
    "dropout": lambda run, rows: [m.p for m in run.model.modules() if isinstance(m, nn.Dropout)] == [0.1],
    "augment": lambda run, rows: isinstance(run.hooks.augment, BatchAugment),
    "label_smoothing": lambda run, rows: run.task.label_smoothing == 0.1,
    "grad_clip": lambda run, rows: all(float(r["grad_norm"]) > 0 for r in rows),
    "l1": lambda run, rows: isinstance(run.hooks.penalty, L1Penalty),
    "nanogpt": lambda run, rows: ([g["weight_decay"] for g in run.optimizer.param_groups] == [0.1, 0.0]
                                  and all(float(r["grad_norm"]) > 0 for r in rows)
                                  and run.hooks.clip is not None),
}


def test_every_option_has_a_checked_effect():
    assert set(EFFECTS) == set(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_trains_and_takes_effect(train_briefly, option):
    # augmented batches are harder to fit: give them two epochs
    run, rows = train_briefly(f"regularization=[{option}]", steps=90 if option == "augment" else 40)
    assert EFFECTS[option](run, rows)
    assert loss_fell(rows), [r["loss"] for r in rows]


def test_combining_options_composes_all_of_them(compose, train_briefly):
    every = [o for o in OPTIONS if o not in ("none", "nanogpt")]  # nanogpt: l2 and grad_clip, preset
    cfg = compose(f"regularization=[{','.join(every)}]")
    assert all(cfg.regularization[o] is not None for o in every)
    run, rows = train_briefly(f"regularization=[{','.join(every)}]", steps=90)
    assert all(EFFECTS[o](run, rows) for o in every)
    assert loss_fell(rows), [r["loss"] for r in rows]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["regularization=[l2]", "regularization.l2.weight_decay=-0.1"],
         "regularization.l2.weight_decay=-0.1: must be a finite number >= 0"),
        (["regularization=[dropout]", "regularization.dropout.p=1.0"],
         "regularization.dropout.p=1.0: must be in [0, 1)"),
        (["regularization=[augment]", "regularization.augment.flip=2"],
         "regularization.augment.flip=2.0: must be a probability in [0, 1], or null"),
        (["regularization=[augment]", "regularization.augment.max_shift=0.5"],
         "regularization.augment.max_shift=0.5: must be in [0, 0.5)"),
        (["regularization=[label_smoothing]", "regularization.label_smoothing.epsilon=1"],
         "regularization.label_smoothing.epsilon=1.0: must be in [0, 1)"),
        (["regularization=[grad_clip]", "regularization.grad_clip.value=0.5"],
         "regularization.grad_clip.max_norm=1.0: must be set, or null with value set (exactly one of the two)"),
        (["regularization=[grad_clip]", "regularization.grad_clip.max_norm=-1"],
         "regularization.grad_clip.max_norm=-1.0: must be > 0"),
        (["regularization=[l1]", "regularization.l1.coefficient=-1e-5"],
         "regularization.l1.coefficient=-1e-05: must be a finite number >= 0"),
    ],
)
def test_bad_values_fail_before_training_naming_the_key(compose, overrides, message):
    assert config_error(compose, *overrides) == message


# --- augmentation


def _batch(n: int = 64, side: int = 8) -> torch.Tensor:
    """n copies of one asymmetric uint8 image, so any per-sample difference comes from the augmentation."""
    image = torch.arange(side * side, dtype=torch.uint8).reshape(1, 1, side, side) % 17
    return image.expand(n, 1, side, side).contiguous()


def test_augmentation_changes_batches_per_sample_and_keeps_shape_and_dtype():
    x = _batch()
    out = BatchAugment("natural", (1, 8, 8), max_shift=0.125, flip=0.5, rotation=10)(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert not torch.equal(out, x)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 5  # each sample draws its own shift and angle


def test_shift_is_a_random_crop_of_the_zero_padded_image():
    x = _batch(side=8)
    aug = BatchAugment("natural", (1, 8, 8), max_shift=0.25, flip=0, rotation=0)
    assert aug.shift == 2
    padded = torch.nn.functional.pad(x[0], [2, 2, 2, 2])
    crops = {tuple(padded[:, i:i + 8, j:j + 8].flatten().tolist()) for i in range(5) for j in range(5)}
    seen = {tuple(o.flatten().tolist()) for o in aug(x)}
    assert seen <= crops and len(seen) > 10


def test_flips_natural_images_by_default_and_only_some_samples():
    x = _batch()
    flipped = BatchAugment("natural", (1, 8, 8), max_shift=0, flip=1, rotation=None)(x)
    assert torch.equal(flipped, x.flip(-1))  # natural images: flipped, not rotated unless asked
    some = BatchAugment("natural", (1, 8, 8), max_shift=0, flip=0.5, rotation=0)(x)
    is_flipped = [torch.equal(o, x[0].flip(-1)) for o in some]
    assert any(is_flipped) and not all(is_flipped)
    assert all(f or torch.equal(o, x[0]) for o, f in zip(some, is_flipped))
    assert BatchAugment("natural", (1, 8, 8), max_shift=0, flip=None, rotation=None).flip == 0.5
    assert BatchAugment("digits", (1, 8, 8), max_shift=0, flip=None, rotation=None).flip == 0.0


def test_values_set_apply_as_set_except_a_flip_of_glyphs():
    assert BatchAugment("natural", (3, 8, 8), max_shift=0, flip=None, rotation=15).rotation == 15
    assert BatchAugment("digits", (1, 8, 8), max_shift=0, flip=None, rotation=None).rotation == 10.0
    assert BatchAugment("digits", (1, 8, 8), max_shift=0, flip=0, rotation=None).flip == 0
    with pytest.raises(FlipError, match="flip=0.5: digits and other glyphs are never flipped"):
        BatchAugment("digits", (1, 8, 8), max_shift=0, flip=0.5, rotation=None)


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_a_flip_set_on_digits_is_a_config_error_not_silently_dropped(compose, tmp_path, dataset):
    from lrtrain.build import build
    from lrtrain.errors import ConfigValueError

    extra = []
    if dataset == "mnist":
        from datafiles import write_mnist

        extra = [f"dataset.root={write_mnist(tmp_path / 'data')}", "dataset.download=false"]
    with pytest.raises(ConfigValueError) as e:
        build(compose(f"dataset={dataset}", *extra, "regularization=[augment]", "regularization.augment.flip=0.5"),
              tmp_path)
    assert str(e.value) == (f"regularization.augment.flip=0.5: must be null or 0 for {dataset}: digits and other "
                            "glyphs are never flipped (a mirrored 7 is not a 7)")


def test_rotation_is_small_and_per_sample():
    torch.manual_seed(0)
    x = torch.zeros(256, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 1:7, 3:5] = 16  # a vertical bar
    out = BatchAugment("digits", (1, 8, 8), max_shift=0, flip=0, rotation=10)(x)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 10
    # a small rotation keeps the bar mostly where it was
    overlap = (out.float() * x.float()).sum((1, 2, 3)) / (x.float() ** 2).sum((1, 2, 3))
    assert overlap.min() > 0.6


def test_augmentation_imports_torchvision_only_when_on():
    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import *; import lrtrain.build, lrtrain.loop;"
            "assert 'torchvision' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- gradient clipping, L1


def _model_with_grads(scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    (model(torch.randn(16, 4)).sum() * scale).backward()
    return model


@pytest.mark.parametrize("max_norm,value", [(0.5, None), (None, 0.01)])
def test_grad_clip_bounds_the_gradient_and_returns_the_norm_before(max_norm, value):
    model = _model_with_grads(100.0)
    params = list(model.parameters())
    before = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))
    assert before > 1
    norm = GradClip(params, max_norm, value)()
    assert float(norm) == pytest.approx(before, rel=1e-5)
    if max_norm is not None:
        after = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))
        assert after == pytest.approx(max_norm, rel=1e-4)
    else:
        assert max(float(p.grad.abs().max()) for p in params) <= value


def test_l1_penalty_is_the_coefficient_times_the_weights_absolute_sum():
    model = _model_with_grads(1.0)
    penalty = L1Penalty(list(model.parameters()), 1e-3)()
    expected = 1e-3 * (model[0].weight.abs().sum() + model[2].weight.abs().sum())  # biases excluded
    torch.testing.assert_close(penalty, expected)
    assert penalty.requires_grad


# --- end to end


def test_cli_combination_logs_the_gradient_norm(lrtrain):
    r = lrtrain(*FAST, "trainer.max_epochs=1", "logger.csv.plots=false", "regularization=[l2,dropout,augment,grad_clip]")
    assert r.returncode == 0, r.stderr
    steps = r.csv("steps.csv")
    assert list(steps[0]) == ["step", "epoch", "lr", "loss", "grad_norm"]
    assert all(math.isfinite(float(s["grad_norm"])) and float(s["grad_norm"]) > 0 for s in steps)
    assert float(r.csv("metrics.csv")[-1]["val_acc"]) > 0.5


def test_cli_bad_value_is_one_line(lrtrain):
    r = lrtrain("regularization=[l2,dropout]", "regularization.dropout.p=1")
    assert r.returncode == 2
    assert r.stderr.strip() == "lrtrain: error: regularization.dropout.p=1.0: must be in [0, 1)"
