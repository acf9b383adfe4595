"""Resume continues bit for bit: SIGKILL a real run at random points, resume, compare with an unbroken run;
and, in-process, for every optimizer's state."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import finished_run, group_options, lrtrain_env, QUIET, run_lrtrain

# 90 steps an epoch, a checkpoint every 7 steps (mostly mid-epoch); shuffling, dropout and augmentation all
# draw random numbers, which a resume must replay exactly.
ARGS = ["dataset.batch_size=16", "trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=7",
        "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false",
        "regularization=[dropout,augment,grad_clip]", "model.hidden=[256,256]"]


def _metrics_without_seconds(path):
    return [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return finished_run(tmp_path_factory, "reference", *ARGS)


def _signal_after_rows(run_dir, rows, cwd, *signums, args=ARGS):
    """Start lrtrain, send it `signums` once steps.csv holds `rows` rows; return the process, ended."""
    cmd = [sys.executable, "-m", "lrtrain", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=lrtrain_env())
    steps = run_dir / "steps.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if steps.exists() and steps.read_text().count("\n") > rows:
            break
        time.sleep(0.002)
    for signum in signums:
        proc.send_signal(signum)
    proc.stdout_text, proc.stderr_text = proc.communicate(timeout=120)
    return proc


def _kill_after_rows(run_dir, rows, cwd):
    """Start lrtrain, SIGKILL it once steps.csv holds `rows` rows; return its exit status."""
    return _signal_after_rows(run_dir, rows, cwd, signal.SIGKILL).returncode


def _resume_matches_reference(run_dir, reference, cwd):
    resumed = run_lrtrain(*ARGS, "trainer.resume=" + str(run_dir), cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "steps.csv").read_bytes() == (reference / "steps.csv").read_bytes()
    assert _metrics_without_seconds(run_dir / "metrics.csv") == _metrics_without_seconds(reference / "metrics.csv")
    mine, theirs = _weights(run_dir), _weights(reference)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    return resumed


@pytest.mark.parametrize("signum, code", [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_then_resume_is_bit_identical(reference, tmp_path, signum, code):
    """SIGINT/SIGTERM: the current step ends, last.pt and summary.json say where, one line, exit 128 + signal."""
    run_dir = tmp_path / "my run"  # the hint must survive being pasted into a shell
    proc = _signal_after_rows(run_dir, random.randrange(5, 200), tmp_path, signum)
    assert proc.returncode == code, proc.stderr_text
    name = signal.Signals(signum).name
    lines = proc.stderr_text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lrtrain: interrupted by {name} at step "), proc.stderr_text
    assert shlex.split(lines[0].split("resume with: ")[1]) == ["lrtrain", f"trainer.resume={run_dir}"]
    summary = json.loads((run_dir / "summary.json").read_text())
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert summary["status"] == "interrupted" and summary["stop_reason"] == f"{name} at step {summary['steps']}"
    assert ckpt["step"] == summary["steps"] and summary.get("test") is None
    assert len((run_dir / "steps.csv").read_text().splitlines()) == 1 + ckpt["step"]  # every step taken is logged
    _resume_matches_reference(run_dir, reference, tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_second_sigint_stops_at_once_and_the_run_still_resumes(reference, tmp_path):
    """Two Ctrl-C in a row, with a checkpoint written every step: the second lands anywhere, a write included."""
    run_dir = tmp_path / "run"
    args = [a for a in ARGS if "checkpoint_every" not in a] + ["trainer.checkpoint_every_n_steps=1"]
    proc = _signal_after_rows(run_dir, random.randrange(5, 200), tmp_path, signal.SIGINT, signal.SIGINT, args=args)
    assert proc.returncode == 130, proc.stderr_text
    assert "Traceback" not in proc.stderr_text and len(proc.stderr_text.strip().splitlines()) == 1, proc.stderr_text
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    _resume_matches_reference(run_dir, reference, tmp_path)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path):
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    resumed_mid_epoch = 0
    for trial in range(3):
        run_dir = tmp_path / f"trial{trial}"
        rows = rng.randrange(5, 250)
        code = _kill_after_rows(run_dir, rows, tmp_path)
        assert code == -signal.SIGKILL, f"trial {trial}: finished before the kill at {rows} rows"
        ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        resumed_mid_epoch += ckpt["position"]["batch"] > 0
        resumed = run_lrtrain(*ARGS, "trainer.resume=" + str(run_dir), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert not (tmp_path / "outputs").exists()  # continued in place, no new dated run dir
        assert (run_dir / "steps.csv").read_bytes() == (reference / "steps.csv").read_bytes(), f"trial {trial}"
        assert _metrics_without_seconds(run_dir / "metrics.csv") == _metrics_without_seconds(
            reference / "metrics.csv")
        mine, theirs = _weights(run_dir), _weights(reference)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
        summary = resumed.__class__(0, "", "", run_dir).summary()
        assert summary["status"] == "completed" and summary["resumed_from_step"] == ckpt["step"]
    assert resumed_mid_epoch >= 1


@pytest.mark.slow
def test_resume_auto_and_extending_a_finished_run(reference, tmp_path):
    first = run_lrtrain(*ARGS[:-1], "trainer.max_epochs=2", "trainer.resume=auto", cwd=tmp_path)
    assert first.returncode == 0 and first.summary()["resumed_from_step"] is None  # nothing to resume yet
    more = run_lrtrain(*ARGS[:-1], "trainer.max_epochs=4", "trainer.resume=auto", cwd=tmp_path,
                       run_dir=first.run_dir)
    assert more.returncode == 0, more.stderr
    summary = more.summary()
    assert summary["resumed_from_step"] == 180 and summary["steps"] == 360 and summary["epochs"] == 4
    assert [int(m["epoch"]) for m in more.csv("metrics.csv")] == [0, 1, 2, 3]
    assert [int(s["step"]) for s in more.csv("steps.csv")] == list(range(360))


class _Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing in the loop handles it."""


@pytest.mark.parametrize("name", group_options("optimizer"))
def test_every_optimizer_resumes_bit_for_bit_from_a_mid_epoch_checkpoint(compose, tmp_path, monkeypatch, name):
    """Stop a run 4 steps after a mid-epoch checkpoint, resume it in place from checkpoints/last.pt (loaded with
    weights_only=True): steps.csv, metrics.csv and the final weights equal those of an unbroken run. Covers each
    optimizer's state (Prodigy's d, schedule-free's z and mode, Muon's two parts) and the mode switches."""
    from lrtrain.build import build
    from lrtrain.loop import fit
    from lrtrain.step import TrainStep

    cfg = compose(f"optimizer={name}", "trainer.max_epochs=2", "dataset.batch_size=64",  # 23 steps an epoch
                  "trainer.checkpoint_every_n_steps=7", *QUIET)
    fit(build(cfg, tmp_path / "reference"))
    broken = tmp_path / "broken"
    step, done = TrainStep.__call__, []

    def kill_after_31(self, *args):
        if len(done) == 31:  # 3 steps after the checkpoint at step 28, in the second epoch
            raise _Killed
        done.append(1)
        return step(self, *args)

    monkeypatch.setattr(TrainStep, "__call__", kill_after_31)
    with pytest.raises(_Killed):
        fit(build(cfg, broken))
    monkeypatch.undo()
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["step"] == 28
    cfg.trainer.resume = str(broken)
    fit(build(cfg, broken))
    reference = tmp_path / "reference"
    assert (broken / "steps.csv").read_bytes() == (reference / "steps.csv").read_bytes()
    assert _metrics_without_seconds(broken / "metrics.csv") == _metrics_without_seconds(reference / "metrics.csv")
    mine, theirs = _weights(broken), _weights(reference)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


@pytest.mark.slow
def test_a_preempted_submitit_job_checkpoints_is_requeued_and_resumes_bit_for_bit(reference, tmp_path):
    """submitit's pre-emption signal (SIGUSR2) on a job of `hydra/launcher=submitit_local`: the job checkpoints,
    submitit's own requeue runs it again, and it resumes from its last.pt into the numbers of an unbroken run."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lrtrain", "-m", "hydra/launcher=submitit_local", *ARGS, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=lrtrain_env())
    steps, deadline = sweep / "0" / "steps.csv", time.monotonic() + 120
    while time.monotonic() < deadline and not (steps.exists() and steps.read_text().count("\n") > 20):
        time.sleep(0.01)
    jobs = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).startswith(
        sys.executable) and "submitit.core._submit" in _cmdline(p) and str(sweep) in _cmdline(p)]
    assert len(jobs) == 1
    os.kill(jobs[0], signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] >= 20
    assert steps.read_bytes() == (reference / "steps.csv").read_bytes()
    assert _metrics_without_seconds(sweep / "0" / "metrics.csv") == _metrics_without_seconds(
        reference / "metrics.csv")
    log = next((sweep / ".submitit").glob("*/*_0_log.err")).read_text()
    assert f"pre-empted (SIGUSR2) at step {summary['resumed_from_step']} of job 0; submitit requeues" in log


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
