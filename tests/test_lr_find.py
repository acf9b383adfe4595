"""The LR range test: `mode=lr_find` on its own, `optimizer.lr=auto` before a real run, and its parts."""

from __future__ import annotations

from conftest import config_error

import csv
from pathlib import Path
import json
import math

import pytest
import torch


PNG = b"\x89PNG\r\n\x1a\n"


def test_lr_find_mode_writes_the_test_and_a_suggestion_in_range(lrtrain, compose):
    r = lrtrain("mode=lr_find", "trainer.progress=none")
    assert r.returncode == 0, r.stderr
    cfg = compose().lr_find
    rows = r.csv("lr_find.csv")
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss"]
    lrs = [float(row["lr"]) for row in rows]
    assert lrs[0] == cfg.min_lr and 10 <= len(rows) <= cfg.num_steps
    ratio = (cfg.max_lr / cfg.min_lr) ** (1 / (cfg.num_steps - 1))  # exponential: a constant ratio per step
    assert all(math.isclose(b / a, ratio, rel_tol=1e-9) for a, b in zip(lrs, lrs[1:]))
    result = json.loads((r.run_dir / "lr_find.json").read_text())
    suggested = result["suggested_lr"]
    assert cfg.min_lr <= suggested <= cfg.max_lr and suggested in lrs
    smoothed = [float(row["smoothed_loss"]) for row in rows]
    at_min = lrs[smoothed.index(min(smoothed))]
    assert suggested <= at_min  # found while the loss still falls, not after it blew up
    assert smoothed[lrs.index(suggested)] < smoothed[0]
    assert f"suggested lr {suggested:.3g}" in r.stdout
    assert (r.run_dir / "lr_find.png").read_bytes()[:8] == PNG
    assert not (r.run_dir / "metrics.csv").exists()  # the test only: no training
    assert r.summary()["lr_find"] == result


def test_lr_auto_trains_with_the_suggestion_from_an_untouched_start(lrtrain, tmp_path):
    args = ["trainer.max_epochs=1", "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]
    auto = lrtrain("optimizer.lr=auto", *args, run_dir=tmp_path / "auto")
    assert auto.returncode == 0, auto.stderr
    suggested = auto.summary()["lr_find"]["suggested_lr"]
    assert (tmp_path / "auto" / "lr_find.csv").is_file()
    assert {float(row["lr"]) for row in auto.csv("steps.csv")} == {suggested}  # constant schedule
    ckpt = torch.load(tmp_path / "auto" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["optimizer"]["lr"] == suggested
    # the same run with that LR written out: identical metrics, so the test left no trace in the model,
    # the optimizer or the random streams
    plain = lrtrain(f"optimizer.lr={suggested!r}", *args, run_dir=tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(auto.csv("metrics.csv")) == strip(plain.csv("metrics.csv"))


def test_lr_finder_restores_model_and_optimizer(compose, tmp_path):
    from lrtrain.build import build, build_lr_finder

    cfg = compose("optimizer=sgd", "optimizer.momentum=0.9", "logger.csv.plots=false", "lr_find.num_steps=20")
    run = build(cfg, tmp_path)
    model_before = {k: v.clone() for k, v in run.model.state_dict().items()}
    opt_before = run.optimizer.state_dict()
    rng_before = torch.get_rng_state()
    result = build_lr_finder(cfg).run(run, plots=False)
    assert result["steps"] == 20
    assert all(torch.equal(model_before[k], v) for k, v in run.model.state_dict().items())
    assert run.optimizer.state_dict()["state"] == {} == opt_before["state"]  # no momentum buffers left
    assert run.optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    assert torch.equal(torch.get_rng_state(), rng_before)


@pytest.mark.parametrize("name", ["schedulefree_adamw", "schedulefree_sgd"])
def test_lr_finder_steps_schedule_free_optimizers_in_train_mode_and_restores_them(compose, tmp_path, name):
    """Without train mode a schedule-free optimizer refuses to step; after the test its state (and mode) and
    the weights are the ones before, so training starts as it would have without the test."""
    from lrtrain.build import build, build_lr_finder

    cfg = compose(f"optimizer={name}", "logger.csv.plots=false", "lr_find.num_steps=20")
    run = build(cfg, tmp_path)
    model_before = {k: v.clone() for k, v in run.model.state_dict().items()}
    result = build_lr_finder(cfg).run(run, plots=False)
    assert result["steps"] >= 10  # stepped (it may stop early once the loss blows up)
    assert all(torch.equal(model_before[k], v) for k, v in run.model.state_dict().items())
    assert run.optimizer.state_dict()["state"] == {}
    assert [g["train_mode"] for g in run.optimizer.param_groups] == [False] and run.optimizer.param_groups[0]["k"] == 0


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    from lrtrain.lr_find import suggest

    lrs = [10 ** (-6 + i * 0.1) for i in range(60)]
    # falls slowly, then steeply around index 30, bottoms out at 45, then explodes (steeper still)
    loss = [2.0 - 1.5 / (1 + math.exp(-(i - 30) / 2)) if i <= 45 else 0.5 + (i - 45) ** 2 for i in range(60)]
    assert suggest(lrs, loss) == lrs[30]
    assert suggest(lrs, [1.0, 2.0, 3.0, 4.0]) == lrs[0]  # rising from the start: the smallest LR
    assert suggest(lrs[:4], [3.0, 2.0, float("nan"), 5.0]) == lrs[0]  # too few points before the minimum


@pytest.mark.parametrize("override, message", [
    ("mode=fit", "mode='fit': must be one of train, lr_find, coord_check"),
    ("optimizer.lr=fast", "optimizer.lr='fast': must be a finite number > 0, or auto"),
    ("lr_find.max_lr=1e-7", "lr_find.max_lr=1e-07: must be > lr_find.min_lr (1e-06)"),
    ("lr_find.diverge_factor=1", "lr_find.diverge_factor=1.0: must be > 1"),
])
def test_bad_lr_find_settings_are_named(compose, override, message):
    assert config_error(compose, override) == message


def _range_test_losses(compose, out_dir, *overrides: str) -> list[float]:
    from lrtrain.build import build, build_lr_finder

    cfg = compose(*overrides, "lr_find.num_steps=12", "trainer.device=cpu")
    run = build(cfg, out_dir)
    build_lr_finder(cfg).run(run, plots=False)
    with open(out_dir / "lr_find.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("reg", [["regularization=[l1]", "regularization.l1.coefficient=0.5"],
                                 ["regularization=[augment]"],
                                 ["regularization=[grad_clip]", "regularization.grad_clip.max_norm=1e-3"]],
                         ids=["l1", "augment", "grad_clip"])
def test_the_range_test_takes_the_training_step(compose, tmp_path, reg):
    """The range test's step is the run's: a regularizer that acts inside the step changes its losses."""
    (tmp_path / "plain").mkdir(), (tmp_path / "reg").mkdir()
    plain = _range_test_losses(compose, tmp_path / "plain")
    regularized = _range_test_losses(compose, tmp_path / "reg", *reg)
    assert len(plain) == len(regularized) == 12
    assert plain[0] == regularized[0] or reg == ["regularization=[augment]"]  # same start, same first batch
    assert plain != regularized
    if "grad_clip" in reg[0]:  # tiny steps: the loss hardly moves, while the plain test's loss falls
        assert abs(regularized[-1] - regularized[0]) < abs(plain[-1] - plain[0])


# A range test that runs until a signal stops it: an LR too small to make the loss diverge, a million steps.
ENDLESS = ["lr_find.num_steps=1000000", "lr_find.max_lr=1e-5", "trainer.progress=none", "logger=[csv]",
           "logger.csv.plots=false"]


def _signal_in_the_task(cmd: list[str], cwd: Path, signum: int) -> tuple[int, str]:
    """Run `cmd`, send `signum` once the job's task has begun: torch is imported there (the start-up path does
    not import it), after the check that lists the jobs of an interrupted sweep as not started."""
    import subprocess
    import time

    from conftest import lrtrain_env

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=lrtrain_env())
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and "libtorch_cpu" not in maps.read_text():
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow  # one process, but 5-16 s on 2 shared cores: its build runs to the first check
def test_sigterm_in_the_range_test_is_recorded_as_sigterm(tmp_path):
    import re
    import signal
    import sys

    run = tmp_path / "run"
    code, err = _signal_in_the_task([sys.executable, "-m", "lrtrain", "mode=lr_find", *ENDLESS,
                                     f"hydra.run.dir={run}"], tmp_path, signal.SIGTERM)
    assert code == 143, err
    assert re.fullmatch(r"lrtrain: interrupted by SIGTERM during the LR range test \(at its step \d+\)", err.strip())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["stop_reason"].startswith("SIGTERM during the LR range test")


@pytest.mark.slow
def test_ctrl_c_in_a_sweeps_range_test_reports_the_sweep_and_the_job_it_did_not_start(tmp_path):
    import signal
    import sys

    sweep = tmp_path / "sweep"
    code, err = _signal_in_the_task([sys.executable, "-m", "lrtrain", "-m", "optimizer.lr=auto", "trainer.seed=0,1",
                                     *ENDLESS, f"hydra.sweep.dir={sweep}"], tmp_path, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"lrtrain: sweep interrupted by SIGINT; see {sweep / 'sweep_summary.csv'}"
    with open(sweep / "sweep_summary.csv", newline="") as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert rows["0"]["status"] == "interrupted" and rows["0"]["cause"].startswith("SIGINT during the LR range test")
    assert rows["1"]["status"] == "not_started"
