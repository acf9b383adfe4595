"""Validation points (`trainer.val_every`) and a fixed part of the validation split (`trainer.val_batches`):
the rows metrics.csv gets, what they average, early stopping and best.pt on them, resume between them, fused."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from conftest import QUIET, fit_killed_after, read_rows

CLI = ["trainer.progress=none", "logger.csv.plots=false"]


def _fit(compose, out, *overrides):
    from lrtrain.build import build
    from lrtrain.loop import fit

    return fit(build(compose(*overrides, *QUIET), out))


# digits: 45 steps an epoch (the last batch short), so 2 epochs are 90 steps
@pytest.mark.parametrize("every, epochs, steps", [
    ("20steps", 2, [20, 40, 60, 80, 90]),  # and the run's last step
    ("10%", 2, [9, 18, 27, 36, 45, 54, 63, 72, 81, 90]),
    ("2ep", 3, [90, 135]),
    ("100steps", 1, [45]),  # longer than the run: its end only
])
def test_rows_come_at_every_validation_point(compose, tmp_path, every, epochs, steps):
    summary = _fit(compose, tmp_path, f"trainer.max_epochs={epochs}", f"trainer.val_every={every}")
    rows = read_rows(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == steps
    assert [int(r["epoch"]) for r in rows] == [(s - 1) // 45 for s in steps]  # the epoch of the row's last step
    assert summary.status == "completed" and summary.final["step"] == steps[-1] and summary.steps == 45 * epochs


def test_val_every_in_steps_from_the_cli(lrtrain):
    """Each row's train_loss is the mean over the steps since the previous row; best.pt is the best row's."""
    r = lrtrain("trainer.max_epochs=2", "trainer.val_every=20steps", *CLI)
    assert r.returncode == 0, r.stderr
    rows = r.csv("metrics.csv")
    assert [int(m["step"]) for m in rows] == [20, 40, 60, 80, 90]
    losses = [float(s["loss"]) for s in r.csv("steps.csv")]  # full batches of 32 up to step 44
    assert float(rows[0]["train_loss"]) == pytest.approx(sum(losses[:20]) / 20, rel=1e-12)
    assert float(rows[1]["train_loss"]) == pytest.approx(sum(losses[20:40]) / 20, rel=1e-12)
    best = min(rows, key=lambda m: float(m["val_loss"]))
    assert torch.load(r.run_dir / "checkpoints" / "best.pt", weights_only=True)["step"] == int(best["step"])
    summary = r.summary()
    assert summary["best_value"] == float(best["val_loss"]) and summary["final"]["step"] == 90


def test_val_batches_scores_the_same_first_batches(lrtrain, compose, tmp_path):
    """val_batches=2 of 64 samples: the metrics are those of the split's first 128 samples, not of the whole."""
    from lrtrain.build import build
    from lrtrain.loop import evaluate

    args = ["trainer.max_epochs=1", "trainer.val_batches=2", "dataset.eval_batch_size=64"]
    r = lrtrain(*args, *CLI)
    assert r.returncode == 0, r.stderr
    row = r.csv("metrics.csv")[-1]
    run = build(compose(*args, *QUIET), tmp_path / "again")
    run.model.load_state_dict(torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"])
    amp = contextlib.nullcontext()
    first_two, whole = evaluate(run.model, run.data.val, run.data, amp, batches=2), evaluate(
        run.model, run.data.val, run.data, amp)
    assert float(row["val_loss"]) == pytest.approx(first_two["loss"], rel=1e-6)
    assert float(row["val_acc"]) == first_two["acc"] and (first_two["acc"] * 128).is_integer()
    assert abs(whole["loss"] - first_two["loss"]) > 1e-3 * whole["loss"]


def test_early_stopping_counts_validation_points(lrtrain):
    # no validation can beat the first by min_delta=1.0: patience 2 stops after the third, at step 30
    r = lrtrain("early_stopping=patience", "early_stopping.patience=2", "early_stopping.min_delta=1.0",
                "trainer.max_epochs=10", "trainer.val_every=10steps", *CLI)
    assert r.returncode == 0, r.stderr
    summary = r.summary()
    assert summary["status"] == "early_stopped" and summary["steps"] == 30 and summary["epochs"] == 1
    assert [int(m["step"]) for m in r.csv("metrics.csv")] == [10, 20, 30]


def test_resume_between_validation_points_is_bit_exact(compose, tmp_path, monkeypatch):
    """Killed at step 33: the last checkpoint (step 28) lies between the validations at 25 and 50, with the
    running train loss of steps 25-27 in it; the resumed run's files and weights equal an unbroken run's."""
    from lrtrain.build import build
    from lrtrain.loop import fit

    args = ["trainer.max_epochs=2", "trainer.val_every=25steps", "trainer.checkpoint_every_n_steps=7",
            "regularization=[dropout]", *QUIET]
    fit(build(compose(*args), tmp_path / "reference"))
    broken = tmp_path / "broken"
    fit_killed_after(build(compose(*args), broken), 33, monkeypatch)
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["position"]["seen"] == 3 * 32
    fit(build(compose(*args, f"trainer.resume={broken}"), broken))
    reference = tmp_path / "reference"
    assert (broken / "steps.csv").read_bytes() == (reference / "steps.csv").read_bytes()
    without_seconds = [{k: v for k, v in r.items() if k != "seconds"} for r in read_rows(broken / "metrics.csv")]
    assert without_seconds == [{k: v for k, v in r.items() if k != "seconds"}
                               for r in read_rows(reference / "metrics.csv")]
    mine, theirs = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in (broken, reference))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


class _Reports:
    """A stand-in for a job's link to its Optuna trial (lrtrain.sweep.pruning.TrialPruning): the indices reported."""

    def __init__(self):
        self.indices = []

    def update(self, index, row):
        self.indices.append(index)


@pytest.mark.parametrize("every, epochs, indices", [
    ("20steps", 2, [0, 1, 2, 3, 4]),  # steps 20, 40, 60, 80 and the run's last, 90
    ("1ep", 2, [0, 1]),
    ("2ep", 3, [0, 1]),  # epochs 1 and 2 (the run's last)
])
def test_pruning_reports_each_validation_point_by_its_index(compose, tmp_path, every, epochs, indices):
    from lrtrain.build import build
    from lrtrain.loop import fit

    run = build(compose(f"trainer.max_epochs={epochs}", f"trainer.val_every={every}", *QUIET), tmp_path)
    run.pruning = _Reports()
    fit(run)
    assert run.pruning.indices == indices


def test_pruning_reports_epochs_after_a_resume_whose_epochs_had_other_lengths(compose, tmp_path):
    """A checkpoint of a 2-rank ddp run at its first epoch's end (23 steps of 64 samples), resumed by one
    process (45 steps an epoch): its epoch ends fall between multiples of 45, and each is reported as its epoch."""
    from lrtrain.build import build
    from lrtrain.loop import fit

    fit(build(compose("trainer.max_epochs=1", *QUIET), tmp_path / "first"))
    ckpt = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", weights_only=True)
    ckpt["step"] = ckpt["position"]["step"] = 23
    torch.save(ckpt, tmp_path / "ddp.pt")
    run = build(compose("trainer.max_epochs=3", f"trainer.resume={tmp_path / 'ddp.pt'}", *QUIET), tmp_path / "on")
    run.pruning = _Reports()
    fit(run)
    rows = read_rows(tmp_path / "on" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [68, 113, 135]  # epochs 1 and 2, then the last step (in epoch 3)
    assert run.pruning.indices == [1, 2, 3]


@pytest.mark.slow
def test_a_fused_sweep_validates_where_its_solo_runs_do(lrtrain, compose, tmp_path):
    from test_fused import assert_same_job

    grid = ["optimizer=adam,sgd", "trainer.max_epochs=2", "trainer.val_every=20steps", "trainer.val_batches=1",
            "dataset.eval_batch_size=100"]
    r = lrtrain("-m", "hydra/launcher=fused", *grid, *CLI, "logger=[csv]", f"hydra.sweep.dir={tmp_path / 'fused'}")
    assert r.returncode == 0, r.stderr
    assert "fused: jobs 0, 1 as one model of 2 replicas" in r.stdout
    for job, name in enumerate(["adam", "sgd"]):
        _fit(compose, tmp_path / "solo" / str(job), f"optimizer={name}", *grid[1:])
        assert_same_job(tmp_path / "fused" / str(job), tmp_path / "solo" / str(job))
        rows = read_rows(tmp_path / "fused" / str(job) / "metrics.csv")
        assert [int(m["step"]) for m in rows] == [20, 40, 60, 80, 90]
        assert json.loads((tmp_path / "fused" / str(job) / "summary.json").read_text())["fused"]["replicas"] == 2
