"""Weight averaging (averaging=ema|swa): the averaged weights are the EMA or the mean of the raw weights at the
steps it names, evaluated beside them (avg_val_* in metrics.csv), kept in checkpoints, and resumed bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import QUIET, config_error, read_rows

# Batch norm (its statistics: averaged for EMA, recomputed by update_bn for SWA) and dropout (random numbers
# that update_bn must not take from training).
MODEL = ["model.norm=batch", "regularization=[dropout]", "dataset.batch_size=32"]
SETTINGS = {"ema": ["averaging=ema", "averaging.decay=0.8", "averaging.start=3steps", "averaging.every=2"],
            "swa": ["averaging=swa", "averaging.start=3steps", "averaging.every=2"]}


def _raw_weights(folder, step):
    return torch.load(folder / f"step_{step}.pt", weights_only=True)["model"]


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_the_averaged_weights_are_the_average_of_the_raw_ones_at_the_steps_named(train_briefly, tmp_path, kind):
    """Updates at steps 3, 5, 7, 9 of 10: EMA avg = w3, then 0.8 avg + 0.2 w; SWA the plain mean of the four."""
    run, _ = train_briefly(*SETTINGS[kind], *MODEL, f"trainer.save_at=[{','.join(f'{s}steps' for s in range(1, 11))}]",
                           "trainer.val_every=5steps", steps=10)
    folder = tmp_path / "checkpoints"
    raws = [_raw_weights(folder, s) for s in (3, 5, 7, 9)]
    saved = torch.load(folder / "last.pt", weights_only=True)["averaged"]
    assert saved["n_averaged"] == 4
    names = [n for n, _ in run.model.named_parameters()]
    for name in names:
        if kind == "ema":
            expected = raws[0][name].clone()
            for raw in raws[1:]:
                expected = 0.8 * expected + 0.2 * raw[name]
        else:
            expected = sum(raw[name] for raw in raws) / 4
        torch.testing.assert_close(saved["model"][name], expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(saved["model"][name], raws[-1][name])
    bn = next(n for n in saved["model"] if n.endswith("running_mean"))
    if kind == "ema":  # use_buffers=True: the statistics are averaged like the weights
        expected = raws[0][bn].clone()
        for raw in raws[1:]:
            expected = 0.8 * expected + 0.2 * raw[bn]
        torch.testing.assert_close(saved["model"][bn], expected, rtol=1e-5, atol=1e-6)
    else:  # update_bn recomputed them for the averaged weights: neither the raw ones nor their mean
        assert not torch.allclose(saved["model"][bn], sum(raw[bn] for raw in raws) / 4)
    rows = read_rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == ["5", "10"]
    for row in rows:
        assert 0 < float(row["avg_val_loss"]) < 10 and 0 <= float(row["avg_val_acc"]) <= 1
        assert row["avg_val_loss"] != row["val_loss"]


def test_no_averaged_metrics_before_the_averaging_starts(train_briefly, tmp_path):
    train_briefly("averaging=ema", "averaging.start=8steps", "trainer.val_every=5steps", steps=10)
    rows = read_rows(tmp_path / "metrics.csv")
    assert math.isnan(float(rows[0]["avg_val_loss"])) and not math.isnan(float(rows[1]["avg_val_loss"]))


def test_best_pt_follows_the_averaged_loss_when_monitored(train_briefly, tmp_path):
    train_briefly("averaging=ema", "averaging.decay=0.5", "trainer.monitor=avg_val_loss",
                  "trainer.val_every=4steps", steps=12)
    rows = read_rows(tmp_path / "metrics.csv")
    best = min(rows, key=lambda r: float(r["avg_val_loss"]))
    ckpt = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["step"] == int(best["step"]) and "averaged" in ckpt
    assert ckpt["position"]["best_value"] == float(best["avg_val_loss"])


@pytest.mark.parametrize("overrides, message", [
    (["averaging=ema", "averaging.decay=1"], "averaging.decay=1.0: must be in (0, 1)"),
    (["averaging=swa", "averaging.every=0"], "averaging.every=0: must be >= 1"),
    (["averaging=swa", "averaging.start=soon"], "averaging.start='soon': must be a duration"),
])
def test_bad_averaging_values_are_one_line(compose, overrides, message):
    assert message in config_error(compose, *overrides)


def test_a_monitored_average_needs_averaging(compose, tmp_path):
    from lrtrain.build import build
    from lrtrain.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match="trainer.monitor='avg_val_loss': must be one of train_loss"):
        build(compose("trainer.monitor=avg_val_loss", *QUIET), tmp_path)


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_resume_continues_the_average_bit_for_bit(compose, tmp_path, kind):
    """Stop at step 13 (mid-epoch, between updates), resume to 24: the averaged weights and the metrics rows
    (raw and averaged) equal the unbroken run's."""
    from lrtrain.build import build
    from lrtrain.loop import fit

    args = [*SETTINGS[kind], *MODEL, "trainer.val_every=6steps", *QUIET]
    fit(build(compose(*args, "trainer.max_steps=24"), tmp_path / "whole"))
    fit(build(compose(*args, "trainer.max_steps=13"), tmp_path / "broken"))
    fit(build(compose(*args, "trainer.max_steps=24", f"trainer.resume={tmp_path / 'broken'}"), tmp_path / "broken"))
    whole, broken = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True) for d in ("whole", "broken"))
    assert whole["averaged"]["n_averaged"] == broken["averaged"]["n_averaged"] == 11
    for name, tensor in whole["averaged"]["model"].items():
        assert torch.equal(tensor, broken["averaged"]["model"][name]), name

    def rows(d):
        # train_* average the steps since the previous row: the stop at 13 made a row there
        return [{k: v for k, v in r.items() if k != "seconds" and not (r["step"] == "18" and k.startswith("train_"))}
                for r in read_rows(tmp_path / d / "metrics.csv") if r["step"] != "13"]

    assert rows("broken") == rows("whole")


@pytest.mark.slow
def test_a_fused_sweep_trains_averaged_jobs_alone_and_says_why(tmp_path):
    from conftest import run_lrtrain

    r = run_lrtrain("-m", "hydra/launcher=fused", "averaging=none,ema", "trainer.max_steps=6", *QUIET,
                    f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "solo: job 1 (averaging: the averaged weights follow the job's own model after every step" in r.stdout
    assert "avg_val_loss" in (tmp_path / "s" / "1" / "metrics.csv").read_text().splitlines()[0]
