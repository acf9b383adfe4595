"""A run dir belongs to one run: default dirs are claimed atomically, a dir holding a run is refused (nothing
written into it) unless resumed or overwritten, and a refused resume leaves the run it names as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import finished_run, lrtrain_env, run_lrtrain
from lrtrain.rundir import claim

QUICK = ["trainer.max_epochs=1", "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` and its bytes: what a refusal must leave unchanged."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return finished_run(tmp_path_factory, "finished", *QUICK)


def _config(run_dir: Path, explicit: bool, resume=None, overwrite=False):
    return OmegaConf.create({
        "trainer": {"strategy": "single", "resume": resume, "overwrite": overwrite},
        "hydra": {"run": {"dir": str(run_dir)}, "output_subdir": ".hydra", "job": {"name": "lrtrain"},
                  "overrides": {"hydra": [f"hydra.run.dir={run_dir}"] if explicit else []}}})


def test_the_default_dir_is_claimed_once_even_within_one_second(tmp_path):
    default = tmp_path / "outputs" / "2026-01-01" / "12-00-00"
    claimed = [claim(_config(default, explicit=False)) for _ in range(3)]
    assert [p.name for p in claimed] == ["12-00-00", "12-00-00-1", "12-00-00-2"]
    assert all(p.is_dir() for p in claimed)


def test_two_runs_started_together_get_a_dir_each(tmp_path):
    cmd = [sys.executable, "-m", "lrtrain", *QUICK]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=lrtrain_env()) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    runs = sorted(p.parent for p in tmp_path.glob("outputs/*/*/summary.json"))
    assert len(runs) == 2
    for run in runs:  # each run's files are its own: one epoch row, one run's steps
        assert len((run / "metrics.csv").read_text().splitlines()) == 2
        assert [line.split(",")[0] for line in (run / "steps.csv").read_text().splitlines()[1:]] == [
            str(i) for i in range(45)]


def test_the_same_explicit_dir_given_to_two_runs_trains_one(tmp_path):
    run_dir = tmp_path / "shared"
    cmd = [sys.executable, "-m", "lrtrain", *QUICK, f"hydra.run.dir={run_dir}"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=lrtrain_env()) for _ in range(2)]
    results = [(proc.wait(timeout=300), proc.stderr.read()) for proc in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refusal = next(err for code, err in results if code == 2)
    assert refusal.startswith(f"lrtrain: error: hydra.run.dir={run_dir}: ") and len(refusal.splitlines()) == 1
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2


def test_a_dir_holding_a_run_is_refused_and_left_untouched(finished, tmp_path):
    before = _tree(finished)
    r = run_lrtrain(*QUICK, "optimizer.lr=0.5", cwd=tmp_path, run_dir=finished)
    assert r.returncode == 2
    assert r.stderr == (f"lrtrain: error: hydra.run.dir={finished}: holds another run (status completed, 1 epoch); "
                        f"resume it with trainer.resume={finished}, replace it with trainer.overwrite=true, or "
                        "choose another dir\n")
    assert _tree(finished) == before


@pytest.mark.slow
def test_overwrite_replaces_the_run(finished, tmp_path):
    target = tmp_path / "copy"
    import shutil

    shutil.copytree(finished, target)
    (target / "checkpoints" / "step-00000040.pt").write_bytes(b"old")
    r = run_lrtrain(*QUICK, "trainer.overwrite=true", "trainer.seed=7", cwd=tmp_path, run_dir=target)
    assert r.returncode == 0, r.stderr
    assert r.summary()["seed"] == 7 and not (target / "checkpoints" / "step-00000040.pt").exists()
    assert len((target / "metrics.csv").read_text().splitlines()) == 2  # not appended to the old rows


@pytest.mark.parametrize("bad", [["optimizer.lr=-1"], ["model.hidden=[32]"]], ids=["bad-value", "other-model"])
def test_a_refused_resume_leaves_the_run_as_it_was(finished, tmp_path, bad):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(finished, target)
    (target / "lrtrain.log").write_text("the run's own log\n")
    before = _tree(target)
    r = run_lrtrain(*QUICK, f"trainer.resume={target}", *bad, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert _tree(target) == before  # summary.json still says completed; .hydra/ and the log as they were


def test_resuming_a_checkpoint_into_a_new_dir_can_roll_back(finished, tmp_path):
    """The new run dir has its own last.pt from its first step: a rollback finds it."""
    r = run_lrtrain("trainer.max_epochs=2", "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false",
                    f"trainer.resume={finished / 'checkpoints' / 'last.pt'}", "optimizer=adam", "optimizer.lr=50",
                    "early_stopping.divergence_threshold=10", "trainer.on_divergence=rollback",
                    "trainer.rollback_factor=0.0001", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = r.summary()
    assert summary["rollbacks"] and summary["rollbacks"][0]["restored_step"] == 45, summary
    assert summary["status"] == "completed" and summary["resumed_from_step"] == 45


def test_temporary_files_of_a_killed_write_are_removed_on_resume(finished, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(finished, target)
    tmp = target / "checkpoints" / ".last.pt.abc123.tmp"
    tmp.write_bytes(b"half a checkpoint")
    r = run_lrtrain(*QUICK[1:], "trainer.max_epochs=2", f"trainer.resume={target}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not tmp.exists()

