"""Fused sweeps (hydra/launcher=fused): the same files as the default launcher, from one vectorized model.

Real `lrtrain -m` processes on the digits default, each sweep against the same sweep under the default launcher;
the vectorized update is checked step by step against the torch.optim optimizers it stands for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import lrtrain_env, read_rows
from lrtrain.plots import plot_curves

QUIET = ["trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]
FUSED = "hydra/launcher=fused"
# Largest |fused - solo| per-step training loss, relative where the loss is above 1. The weights stay
# bit-identical on the digits default; the logged loss is a mean taken over a [replicas, batch] tensor, whose
# reduction order gives differences of a few 1e-7 (measured: at most 4.8e-7 in the first epoch, 3e-8 in the
# 20th, README "Fused sweeps"); 1e-5 leaves room for chaotic runs (an LR near divergence) and is far below the
# step-to-step change of the loss that a real difference (another batch, LR or init) makes.
TOL = 1e-5


def sweep(lrtrain, sweep_dir: Path, *overrides: str, quiet: list[str] = QUIET):
    return lrtrain("-m", *overrides, *quiet, f"hydra.sweep.dir={sweep_dir}")


def jobs(sweep_dir: Path) -> list[str]:
    return sorted((p.name for p in sweep_dir.iterdir() if p.is_dir()), key=int)


def assert_same_job(fused: Path, solo: Path, tol: float = TOL) -> None:
    """A fused job's files against the same job under the default launcher."""
    a, b = read_rows(fused / "steps.csv"), read_rows(solo / "steps.csv")
    assert len(a) == len(b) and len(a) > 0
    assert [r["lr"] for r in a] == [r["lr"] for r in b]  # the LR column is identical, as text
    assert [r["step"] for r in a] == [r["step"] for r in b]
    # relative to the loss where it is above 1 (a diverging job's losses reach 1e7 and more)
    diffs = [abs(float(x["loss"]) - float(y["loss"])) / max(1.0, abs(float(y["loss"]))) for x, y in zip(a, b)
             if x["loss"] != y["loss"]]  # nan == nan as text
    assert max(diffs, default=0.0) < tol, max(diffs)
    ma, mb = read_rows(fused / "metrics.csv"), read_rows(solo / "metrics.csv")
    assert [r["epoch"] for r in ma] == [r["epoch"] for r in mb]
    for x, y in zip(ma, mb):
        for key in ("train_loss", "val_loss", "lr"):
            assert x[key] == y[key] or abs(float(x[key]) - float(y[key])) < tol * max(1.0, abs(float(y[key]))), (
                key, x[key], y[key])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (fused, solo))
    for key in ("status", "best_epoch", "epochs", "steps", "stop_reason", "seed"):
        assert sa[key] == sb[key], key
    assert {p.name for p in (fused / "checkpoints").iterdir()} == {p.name for p in (solo / "checkpoints").iterdir()}
    if (solo / ".hydra").is_dir():  # a job of a sweep
        assert (fused / ".hydra" / "overrides.yaml").read_text() == (solo / ".hydra" / "overrides.yaml").read_text()


def test_mixed_optimizers_and_seeds_fuse_into_the_default_launchers_files(lrtrain, compose, tmp_path):
    grid = ["optimizer=adam,momentum", "trainer.seed=0,1", "trainer.max_epochs=2"]
    # against the default launcher itself: the whole outputs contract, .hydra/ and the report included; the
    # fused jobs' curves.png are drawn by worker processes (lrtrain.plots.CurvesPool)
    fused = sweep(lrtrain, tmp_path / "fused", FUSED, *grid, quiet=QUIET[:2])
    assert fused.returncode == 0, fused.stderr
    assert "fused: jobs 0, 1, 2, 3 as one model of 4 replicas" in fused.stdout
    solo = sweep(lrtrain, tmp_path / "solo", *grid, quiet=QUIET[:2])
    assert solo.returncode == 0, solo.stderr
    assert jobs(tmp_path / "fused") == jobs(tmp_path / "solo") == ["0", "1", "2", "3"]
    for job in "0123":
        assert_same_job(tmp_path / "fused" / job, tmp_path / "solo" / job)
        summary = json.loads((tmp_path / "fused" / job / "summary.json").read_text())
        assert summary["fused"] == {"replicas": 4, "jobs": "0,1,2,3"}
        png = (tmp_path / "fused" / job / "curves.png").read_bytes()
        assert png == plot_curves(tmp_path / "fused" / job).read_bytes()  # as the CSV logger draws it here
    # each seed its own init and data order: the first losses differ between seeds, not between launchers
    first = {job: read_rows(tmp_path / "fused" / job / "steps.csv")[0]["loss"] for job in "0123"}
    assert first["0"] != first["1"] and first["2"] != first["3"]
    # the sweep report, as the default launcher writes it
    report = {row["job"]: row for row in read_rows(tmp_path / "fused" / "sweep_summary.csv")}
    solo_report = {row["job"]: row for row in read_rows(tmp_path / "solo" / "sweep_summary.csv")}
    assert report.keys() == solo_report.keys() and {r["status"] for r in report.values()} == {"completed"}
    assert [r["overrides"] for r in report.values()] == [r["overrides"] for r in solo_report.values()]

    # a fused job's last.pt is an ordinary checkpoint: it resumes alone, as a default-launcher job (in-process)
    from lrtrain.build import build
    from lrtrain.loop import fit

    job = tmp_path / "fused" / "1"
    cfg = compose(f"trainer.resume={job / 'checkpoints' / 'last.pt'}", "trainer.max_epochs=3", "trainer.seed=1",
                  *QUIET, "trainer.device=cpu")
    summary = fit(build(cfg, tmp_path / "resumed"))
    assert summary.status == "completed" and summary.resumed_from_step == 90 and summary.steps == 135


def test_a_diverging_job_changes_nothing_in_the_others(lrtrain, compose, tmp_path):
    """lr=1e6 diverges through its 3 rollbacks, lr=8 is rolled back once and recovers, lr=0.05 never is; each
    job's files equal those of the same job fitted alone (in-process, as the default launcher's job does)."""
    from lrtrain.build import build
    from lrtrain.loop import fit

    lrs = ["0.05", "1e6", "8"]
    grid = ["optimizer=sgd", "trainer.on_divergence=rollback", "early_stopping.divergence_threshold=3",
            "trainer.max_epochs=2"]
    fused = sweep(lrtrain, tmp_path / "fused", FUSED, f"optimizer.lr={','.join(lrs)}", *grid)
    assert fused.returncode == 1  # the sweep says one job did not complete
    assert "fused: jobs 0, 1, 2 as one model of 3 replicas" in fused.stdout
    last = fused.stderr.strip().splitlines()[-1]
    assert last.startswith("lrtrain: error: 1 job of the sweep did not complete (job 1 diverged: ")
    for job, lr in enumerate(lrs):
        fit(build(compose(f"optimizer.lr={lr}", *grid, *QUIET, "trainer.device=cpu"), tmp_path / "solo" / str(job)))
        assert_same_job(tmp_path / "fused" / str(job), tmp_path / "solo" / str(job))
    summaries = [json.loads((tmp_path / "fused" / job / "summary.json").read_text()) for job in "012"]
    assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]
    assert [len(s["rollbacks"]) for s in summaries] == [0, 3, 1]
    alone = json.loads((tmp_path / "solo" / "1" / "summary.json").read_text())
    assert summaries[1]["rollbacks"] == alone["rollbacks"]


@pytest.mark.slow
def test_incompatible_jobs_split_into_groups_and_unsupported_ones_run_alone(lrtrain, tmp_path):
    r = sweep(lrtrain, tmp_path / "s", FUSED, "model.hidden=[32],[64]", "optimizer=adam,sgd,adagrad",
              "trainer.max_steps=5,9")
    assert r.returncode == 0, r.stderr
    # jobs are numbered hidden x optimizer x max_steps: 0-5 are hidden [32], 6-11 hidden [64]
    assert "fused: jobs 0, 1, 2, 3 as one model of 4 replicas" in r.stdout
    assert "fused: jobs 6, 7, 8, 9 as one model of 4 replicas" in r.stdout
    for job in (4, 5, 10, 11):
        assert f"solo: job {job} (optimizer Adagrad has no fused update" in r.stdout
    for job in range(12):
        summary = json.loads((tmp_path / "s" / str(job) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == (5, 9)[job % 2]  # each its own length
        assert ("fused" in summary) == (job not in (4, 5, 10, 11))
    assert len(read_rows(tmp_path / "s" / "sweep_summary.csv")) == 12


def test_ddp_is_refused_in_one_line(lrtrain, tmp_path):
    r = sweep(lrtrain, tmp_path / "s", FUSED, "trainer.strategy=ddp", "optimizer.lr=1e-3,3e-3")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        "lrtrain: error: trainer.strategy='ddp': must be single with hydra/launcher=fused (ddp spreads one job "
        "over several processes; fused trains several jobs in one)")


def test_a_compiled_job_runs_alone(compose, tmp_path):
    from lrtrain.build import build
    from lrtrain.sweep.fused import unfusable

    run = build(compose("trainer.compile=true", "trainer.device=cpu", "logger=[csv]"), tmp_path / "run")
    assert unfusable(run).startswith("trainer.compile")


# ------------------------------------------------------------------------------------ the update itself

UPDATES = [
    ["optimizer=adam", "optimizer.lr=1e-3"],
    ["optimizer=adam", "optimizer.lr=3e-3", "optimizer.betas=[0.8,0.99]", "optimizer.eps=1e-6", "regularization=[l2]"],
    ["optimizer=adam", "optimizer.lr=2e-3", "regularization=[l2]", "regularization.l2.decoupled=true"],
    ["optimizer=adamw", "optimizer.lr=1e-3", "regularization=[l2]", "regularization.l2.weight_decay=0.1"],
    ["optimizer=amsgrad", "optimizer.lr=1e-3"],
    ["optimizer=amsgrad", "optimizer.lr=5e-3", "optimizer.betas=[0.5,0.9]"],
    ["optimizer=sgd", "optimizer.lr=0.1", "regularization=[l2]", "regularization.l2.decoupled=true"],
    ["optimizer=sgd", "optimizer.lr=0.3"],
    ["optimizer=momentum", "optimizer.lr=0.05", "regularization=[l2]", "regularization.l2.decay_1d=true"],
    ["optimizer=momentum", "optimizer.lr=0.02", "optimizer.momentum=0.5", "optimizer.dampening=0.1"],
    ["optimizer=momentum", "optimizer.lr=0.01", "optimizer.nesterov=true", "regularization=[l2]"],
]


def test_the_fused_update_is_torch_optims_per_replica(compose, tmp_path):
    """Every replica, after each of 5 steps with its own LR each step, holds what its torch optimizer holds.

    To a few float32 ulps: a per-replica LR or decay factor is a broadcast tensor, where torch.optim multiplies
    by a Python float (torch's add(alpha=) may fuse the multiply-add); a wrong LR, beta, decay or bias correction
    moves the weights by 1e-4 or more in 5 steps."""
    from lrtrain.build import build
    from lrtrain.sweep.fused import Replicas, order_replicas

    runs = [build(compose(*o, "trainer.device=cpu", "trainer.progress=none", "logger=[csv]"), tmp_path / str(i))
            for i, o in enumerate(UPDATES)]
    runs = [runs[i] for i in order_replicas(runs)]
    replicas = Replicas(runs)
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        lrs = [run.optimizer.param_groups[0]["lr"] * (1 + 0.3 * step) for run in runs]  # a schedule of sorts
        grads = [torch.randn(p.shape, generator=gen) for p in replicas.params]
        for view, g in zip(replicas.grads, grads):
            view.copy_(g)
        replicas._update(lrs)
        replicas.dirty = [True] * len(runs)
        for k, run in enumerate(runs):
            for group in run.optimizer.param_groups:
                group["lr"] = lrs[k]
            for p, g in zip(run.model.parameters(), grads):
                p.grad = g[k].clone()
            run.optimizer.step()
    for k, run in enumerate(runs):
        for i, p in enumerate(run.model.parameters()):
            torch.testing.assert_close(replicas.params[i][k], p.detach(), rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{run.config['optimizer']}, param {i}: {m}")
        mine = {}
        for i, p in enumerate(run.model.parameters()):
            state = run.optimizer.state[p]
            for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
                if name in state:
                    o, n = replicas.offsets[i], replicas.sizes[i]
                    torch.testing.assert_close(replicas.state[name][k, o:o + n].view_as(p), state[name],
                                               rtol=1e-5, atol=1e-7)
                    mine[name] = True
            if "step" in state:
                assert replicas.steps[k] == int(state["step"]) == 5
        assert mine or run.optimizer.param_groups[0].get("momentum") == 0


# ---------------------------------------------------------------------------------- kill and re-run


@pytest.mark.slow
def test_a_killed_fused_sweep_resumes_when_run_again(tmp_path):
    """SIGKILL mid-sweep, the same command again: finished epochs are kept, the rest resumes from last.pt, and
    every job ends as an uninterrupted fused sweep ends."""
    args = [sys.executable, "-m", "lrtrain", "-m", FUSED, "optimizer.lr=1e-3,3e-3", "trainer.max_epochs=12", *QUIET]
    killed = subprocess.Popen(args + [f"hydra.sweep.dir={tmp_path / 'killed'}"], cwd=tmp_path, env=lrtrain_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "0" / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) > 3):
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "0" / "summary.json").is_file()  # killed before it ended
    again = subprocess.run(args + [f"hydra.sweep.dir={tmp_path / 'killed'}"], cwd=tmp_path, env=lrtrain_env(),
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    whole = subprocess.run(args + [f"hydra.sweep.dir={tmp_path / 'whole'}"], cwd=tmp_path, env=lrtrain_env(),
                           capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    for job in "01":
        summary = json.loads((tmp_path / "killed" / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["resumed_from_step"] > 0
        assert_same_job(tmp_path / "killed" / job, tmp_path / "whole" / job)
        # and bit for bit, as a solo resume is: every step's loss and the final weights
        killed, whole = tmp_path / "killed" / job, tmp_path / "whole" / job
        assert (killed / "steps.csv").read_bytes() == (whole / "steps.csv").read_bytes()
        a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in (killed, whole))
        assert all(torch.equal(a[key], b[key]) for key in b)


# ------------------------------------------------------------------- models the matmul path does not cover


# bf16 keeps 8 bits of mantissa (rounding 2^-9 = 2e-3 relative): a convolution vmapped over the replicas rounds
# its bf16 products in another order than a solo one (the first step's loss differs by 2e-5), and 30 steps of
# training carry that along (9e-3 measured). The bf16 matmul path stays within TOL.
BF16_VMAP_TOL = 2e-2


@pytest.mark.parametrize("model, tol", [(["model=cnn"], TOL), (["model.norm=layer", "model.hidden=[32,16]"], TOL),
                                        (["trainer.precision=bf16"], TOL),
                                        (["model=cnn", "trainer.precision=bf16"], BF16_VMAP_TOL)],
                         ids=["cnn-batch-norm", "mlp-layer-norm", "mlp-bf16", "cnn-bf16"])
def test_other_models_and_bf16_fuse_like_solo_runs(compose, tmp_path, model, tol):
    """The CNN (convolutions, batch norm statistics per replica) and a layer-norm MLP go through
    torch.func.vmap, and bf16 autocast wraps either path: in-process, against the same runs fitted alone."""
    from lrtrain.build import build
    from lrtrain.sweep.fused import fit_fused, unfusable
    from lrtrain.loop import fit

    jobs = [["optimizer.lr=1e-3"], ["optimizer=momentum", "trainer.seed=1"]]
    settings = [*model, "trainer.max_steps=30", "trainer.device=cpu", "trainer.progress=none", "logger=[csv]",
                "logger.csv.plots=false"]
    runs = [build(compose(*job, *settings), tmp_path / f"fused{i}") for i, job in enumerate(jobs)]
    assert [unfusable(run) for run in runs] == [None, None]
    assert [s.status for s in fit_fused(runs)] == ["completed", "completed"]
    for i, job in enumerate(jobs):
        fit(build(compose(*job, *settings), tmp_path / f"solo{i}"))
        assert_same_job(tmp_path / f"fused{i}", tmp_path / f"solo{i}", tol)


@pytest.mark.slow
def test_ctrl_c_interrupts_every_replica_and_the_same_command_finishes_them(tmp_path):
    args = [sys.executable, "-m", "lrtrain", "-m", FUSED, "optimizer.lr=1e-3,3e-3", "trainer.max_epochs=12", *QUIET,
            f"hydra.sweep.dir={tmp_path / 's'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=lrtrain_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = tmp_path / "s" / "0" / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) > 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    summaries = [json.loads((tmp_path / "s" / job / "summary.json").read_text()) for job in "01"]
    assert {s["status"] for s in summaries} == {"interrupted"}
    assert summaries[0]["steps"] == summaries[1]["steps"] < 12 * 45  # stopped together, after the same step
    again = subprocess.run(args, cwd=tmp_path, env=lrtrain_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    for job, before in zip("01", summaries):
        summary = json.loads((tmp_path / "s" / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["resumed_from_step"] == before["steps"]
        assert len(read_rows(tmp_path / "s" / job / "steps.csv")) == 12 * 45


@pytest.mark.parametrize("model", [[], pytest.param(["model=cnn"], marks=pytest.mark.slow)],
                         ids=["mlp", "cnn-batch-norm"])
def test_replicas_resumed_at_different_steps_go_on_bit_for_bit(compose, tmp_path, model):
    """A kill between two replicas' checkpoints (or a rollback) leaves replicas at different places in their
    epochs: job 0, resumed at step 40, takes its epoch's short last batch (step 44) beside job 1's full one
    (step 64). Each goes on exactly as in the group that was never stopped: files, losses and weights."""
    from lrtrain.build import build
    from lrtrain.sweep.fused import fit_fused

    jobs = [["optimizer.lr=1e-3"], ["optimizer.lr=3e-3", "trainer.seed=1"]]
    settings = [*model, "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=20", "trainer.keep_last_k=4",
                "trainer.device=cpu", *QUIET]
    fit_fused([build(compose(*job, *settings), tmp_path / f"whole{i}") for i, job in enumerate(jobs)])
    for i, step in enumerate((40, 60)):
        shutil.copytree(tmp_path / f"whole{i}", tmp_path / f"resumed{i}")
        checkpoints = tmp_path / f"resumed{i}" / "checkpoints"
        shutil.copy(checkpoints / f"step-{step:08d}.pt", checkpoints / "last.pt")
    runs = [build(compose(*job, *settings, "trainer.resume=auto"), tmp_path / f"resumed{i}")
            for i, job in enumerate(jobs)]
    assert [run.resume["step"] for run in runs] == [40, 60]
    assert [s.status for s in fit_fused(runs)] == ["completed", "completed"]
    for i in range(len(jobs)):
        whole, resumed = tmp_path / f"whole{i}", tmp_path / f"resumed{i}"
        for name in ("steps.csv", "metrics.csv"):  # as text, but for the wall-clock seconds
            a, b = ([{k: v for k, v in row.items() if k != "seconds"} for row in read_rows(d / name)]
                    for d in (whole, resumed))
            assert a == b, name
        a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (whole, resumed))
        assert a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
