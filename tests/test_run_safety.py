"""Run safety at the edges of a run: `trainer.overwrite` deletes only a run's own files, a live run's dir is
refused, every failure of a claim stops the run, a sweep's job dirs follow one rule under every launcher, and
a run that never took a step blocks nothing (lrtrain/rundir.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import lrtrain_env, run_lrtrain
from lrtrain import rundir
from lrtrain.rundir import RECORD, RunDirClaim, RunDirRefused, claim, claim_sweep

QUICK = ["trainer.max_epochs=1", "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` and its bytes (symlinks as their target): what a refusal must leave unchanged."""
    return {str(p.relative_to(path)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(path.rglob("*")) if p.is_file() or p.is_symlink()}


def _config(run_dir: Path, explicit: bool = True, resume=None, overwrite=False, **trainer):
    return OmegaConf.create({
        "trainer": {"strategy": "single", "resume": resume, "overwrite": overwrite, **trainer},
        "hydra": {"run": {"dir": str(run_dir)}, "output_subdir": ".hydra", "job": {"name": "lrtrain"},
                  "overrides": {"hydra": [f"hydra.run.dir={run_dir}"] if explicit else []}}})


def _fake_run(run_dir: Path, status: str = "completed", checkpoint: bool = True, lr_find: bool = False) -> Path:
    """A run dir as a run leaves it, claimed by the real claim (its record) and its files written."""
    claim(_config(run_dir))
    rundir.release(run_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text("trainer: {}\n")
    (run_dir / "lrtrain.log").write_text("log\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "epochs": 1 if checkpoint else None}))
    if lr_find:
        (run_dir / "lr_find.csv").write_text("step,lr,loss,smoothed_loss\n0,1e-06,2.3,2.3\n")
    else:
        (run_dir / "steps.csv").write_text("step,epoch,lr,loss\n0,0,0.001,2.3\n")
    if checkpoint:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    return run_dir


def _one_line_error(r, *parts: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("lrtrain: error: ") and len(r.stderr.splitlines()) == 1, r.stderr
    for part in parts:
        assert part in r.stderr, r.stderr


# ------------------------------------------------------------------------------- overwrite deletes only runs


def test_overwrite_refuses_a_folder_of_the_users_own_files(tmp_path):
    thesis = tmp_path / "thesis"
    (thesis / "checkpoints").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("\\chapter{One}\n")
    (thesis / "checkpoints" / "draft.pt").write_bytes(b"mine")
    before = _tree(thesis)
    r = run_lrtrain(*QUICK, "trainer.overwrite=true", cwd=tmp_path, run_dir=thesis)
    _one_line_error(r, f"hydra.run.dir={thesis}: ", "no lrtrain run")
    assert _tree(thesis) == before


def test_overwrite_refuses_a_run_with_the_users_files_beside_it(tmp_path):
    run = _fake_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine\n")
    before = _tree(run)
    r = run_lrtrain(*QUICK, "trainer.overwrite=true", cwd=tmp_path, run_dir=run)
    _one_line_error(r, f"hydra.run.dir={run}: holds notes.txt, which lrtrain did not write; nothing was deleted")
    assert _tree(run) == before


@pytest.mark.parametrize("where", [".", "${oc.env:HOME}", ".."], ids=["cwd", "home", "outputs-parent"])
def test_overwrite_refuses_the_cwd_home_and_the_outputs_parents(tmp_path, where):
    """Each holds a run (its record) beside the user's files: still never deleted."""
    home = tmp_path / "home"  # HOME of the process: never the real one, whatever the code does
    work = home / "projects" / "work"
    work.mkdir(parents=True)
    for d in (home, work.parent, work):
        _fake_run(d)
        (d / "thesis.tex").write_text("mine\n")
    before = _tree(home)
    r = subprocess.run([sys.executable, "-m", "lrtrain", *QUICK, "trainer.overwrite=true", f"hydra.run.dir={where}"],
                       cwd=work, capture_output=True, text=True, env=lrtrain_env({"HOME": str(home)}), timeout=300)
    _one_line_error(r, "trainer.overwrite=true deletes run dirs only")
    assert _tree(home) == before


def test_overwrite_deletes_only_the_names_the_record_lists(tmp_path):
    """A record that does not list a name lrtrain writes (an older or hand-made one): that entry is not the run's."""
    run = _fake_run(tmp_path / "run")
    record = json.loads((run / RECORD).read_text())
    record["names"] = [n for n in record["names"] if n != "steps.csv"]
    (run / RECORD).write_text(json.dumps(record))
    with pytest.raises(RunDirRefused, match="holds steps.csv, which lrtrain did not write"):
        claim(_config(run, overwrite=True))
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "summary.json").is_file()


def test_overwrite_through_a_symlink_replaces_the_linked_run_and_keeps_the_link(tmp_path):
    run = _fake_run(tmp_path / "run")
    link = tmp_path / "link"
    link.symlink_to(run)
    cfg = _config(link, overwrite=True)
    assert claim(cfg) == run and cfg.hydra.run.dir == str(run)  # Hydra writes into the dir itself
    rundir.release(run)
    assert link.is_symlink() and sorted(p.name for p in run.iterdir()) == [RECORD]  # the old run's files gone


def test_resume_through_a_symlink_continues_in_the_linked_dir(tmp_path):
    run = _fake_run(tmp_path / "run")
    link = tmp_path / "link"
    link.symlink_to(run)
    cfg = _config(link, explicit=False, resume=str(link))
    assert claim(cfg) == run and cfg.hydra.run.dir == str(run)
    rundir.release(run)


def test_a_symlinked_file_in_a_run_is_unlinked_not_followed(tmp_path):
    outside = tmp_path / "precious.csv"
    outside.write_text("mine\n")
    run = _fake_run(tmp_path / "run")
    (run / "metrics.csv").symlink_to(outside)
    claim(_config(run, overwrite=True))
    rundir.release(run)
    assert outside.read_text() == "mine\n" and not (run / "metrics.csv").exists()


# ------------------------------------------------------------------------------------------ a live run


HOLD = """
import sys, time
from omegaconf import OmegaConf
from lrtrain.rundir import claim
run_dir = sys.argv[1]
claim(OmegaConf.create({"trainer": {"strategy": "single", "resume": run_dir, "overwrite": False},
      "hydra": {"run": {"dir": run_dir}, "output_subdir": ".hydra", "job": {"name": "lrtrain"},
                "overrides": {"hydra": ["hydra.run.dir=" + run_dir]}}}))
print("claimed", flush=True)
time.sleep(600)
"""


def test_a_live_run_refuses_overwrite_and_resume_until_its_process_ends(tmp_path):
    """The lock is the real claim's (a resume in place), held by another process; the OS lets go of it when
    that process dies."""
    run = _fake_run(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                              env=lrtrain_env())
    try:
        assert holder.stdout.readline() == "claimed\n"
        before = _tree(run)
        r = run_lrtrain(*QUICK, "trainer.overwrite=true", cwd=tmp_path, run_dir=run)
        _one_line_error(r, f"is still running (pid {holder.pid})")
        assert _tree(run) == before
        with pytest.raises(RunDirRefused, match=f"trainer.resume={run}: is still running"):
            claim(_config(run, resume=str(run)))
    finally:
        holder.kill()
        holder.wait()
    cfg = _config(run, overwrite=True)
    assert claim(cfg) == run  # the holder is gone: its lock with it
    rundir.release(run)


@pytest.mark.slow
def test_overwrite_of_a_run_that_is_training_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    training = subprocess.Popen([sys.executable, "-m", "lrtrain", "trainer.max_epochs=200", *QUICK[1:],
                                 f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=lrtrain_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "steps.csv").is_file():
            assert training.poll() is None and time.monotonic() < deadline, training.stderr.read()
            time.sleep(0.05)
        for how in (["trainer.overwrite=true", f"hydra.run.dir={run_dir}"], [f"trainer.resume={run_dir}"]):
            r = run_lrtrain(*QUICK, *how, "trainer.seed=7", cwd=tmp_path)
            _one_line_error(r, f"is still running (pid {training.pid})")
    finally:
        training.send_signal(signal.SIGINT)
        training.wait(timeout=120)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["seed"] != 7
    assert json.loads((run_dir / RECORD).read_text())["pid"] == training.pid


# ------------------------------------------------------------------------- every failure of a claim stops


def test_a_claim_that_fails_with_an_oserror_stops_the_run(tmp_path, monkeypatch):
    """Hydra warns about an Exception raised in a callback and trains on: the callback raises a BaseException."""
    run = _fake_run(tmp_path / "run")

    def rmtree(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rundir.shutil, "rmtree", rmtree)
    with pytest.raises(RunDirRefused, match=r"hydra.run.dir=.*: cannot be claimed: Permission denied"):
        RunDirClaim().on_run_start(config=_config(run, overwrite=True))


def test_a_run_dir_that_cannot_be_made_is_one_line_and_nothing_trains(tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    r = run_lrtrain(*QUICK, cwd=tmp_path, run_dir=tmp_path / "afile" / "run")
    _one_line_error(r, "cannot be claimed: Not a directory")
    assert (tmp_path / "afile").read_text() == "mine\n" and not list(tmp_path.glob("outputs"))


# ------------------------------------------------------------------------------------ recovery, advice


def test_a_run_that_never_took_a_step_does_not_block_the_next(tmp_path):
    run = _fake_run(tmp_path / "run", status="failed", checkpoint=False)
    (run / "notes.txt").write_text("mine\n")  # a plain re-claim deletes only the run's own files
    assert claim(_config(run)) == run
    rundir.release(run)
    assert sorted(p.name for p in run.iterdir()) == [RECORD, "notes.txt"]


def test_the_refusal_suggests_resume_only_when_there_is_a_checkpoint_and_quotes_paths(tmp_path):
    lr_find = _fake_run(tmp_path / "an lr find", lr_find=True, checkpoint=False)
    with pytest.raises(RunDirRefused) as e:
        claim(_config(lr_find))
    assert "trainer.resume" not in str(e.value) and f"hydra.run.dir='{lr_find}': holds another run" in str(e.value)
    run = _fake_run(tmp_path / "a run")
    with pytest.raises(RunDirRefused, match=f"resume it with trainer.resume='{run}'"):
        claim(_config(run))


def test_resume_of_an_interrupted_lr_range_test_says_what_works(tmp_path):
    run = _fake_run(tmp_path / "lr find", status="interrupted", checkpoint=False, lr_find=True)
    before = _tree(run)
    r = run_lrtrain("mode=lr_find", f"trainer.resume={run}", *QUICK, cwd=tmp_path)
    _one_line_error(r, "an LR range test is not resumed: run it again with", f"hydra.run.dir='{run}'")
    assert _tree(run) == before


@pytest.mark.slow
def test_a_corrected_command_runs_where_the_mistaken_one_failed(tmp_path):
    run_dir = tmp_path / "my run"
    r = run_lrtrain(*QUICK, "optimizer.lr=-1", cwd=tmp_path, run_dir=run_dir)
    assert r.returncode == 2 and "optimizer.lr=-1" in r.stderr
    r = run_lrtrain(*QUICK, "optimizer.lr=0.01", cwd=tmp_path, run_dir=run_dir)
    assert r.returncode == 0, r.stderr
    assert r.summary()["status"] == "completed" and len(r.csv("metrics.csv")) == 1


@pytest.mark.slow
def test_an_interrupted_lr_range_test_runs_again_in_its_dir(tmp_path):
    run_dir = tmp_path / "lr find"
    args = [sys.executable, "-m", "lrtrain", "mode=lr_find", "lr_find.num_steps=100000", "lr_find.max_lr=1e-5",
            *QUICK, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=lrtrain_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while "libtorch_cpu" not in Path(f"/proc/{proc.pid}/maps").read_text():  # torch is imported in the run's try
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    time.sleep(2)  # into the range test (it writes lr_find.csv only when it ends)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    r = run_lrtrain("mode=lr_find", f"trainer.resume={run_dir}", *QUICK, cwd=tmp_path)
    _one_line_error(r, f"run it again with hydra.run.dir='{run_dir}'")
    r = run_lrtrain("mode=lr_find", *QUICK, cwd=tmp_path, run_dir=run_dir)  # what the refusal said
    assert r.returncode == 0, r.stderr
    assert r.summary()["status"] == "completed" and (run_dir / "lr_find.json").is_file()


# ---------------------------------------------------------------------------------------------- sweeps


def test_the_default_sweep_dir_is_one_per_sweep_even_within_one_second(tmp_path):
    default = tmp_path / "outputs" / "multirun" / "2026-01-01" / "12-00-00"
    cfgs = [OmegaConf.create({"hydra": {"sweep": {"dir": str(default)}, "overrides": {"hydra": []}}})
            for _ in range(2)]
    dirs = [claim_sweep(cfg) for cfg in cfgs]
    assert [d.name for d in dirs] == ["12-00-00", "12-00-00-1"]
    # each sweep's jobs are composed again from its overrides: they carry its own dir
    assert cfgs[1].hydra.overrides.hydra == [f"hydra.sweep.dir='{dirs[1]}'"]


def test_a_sweep_dir_of_the_users_files_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine\n")
    r = run_lrtrain("-m", "optimizer.lr=0.01,0.001", *QUICK, f"hydra.sweep.dir={mine}", cwd=tmp_path)
    _one_line_error(r, f"hydra.sweep.dir={mine}: holds thesis.tex, not a sweep's")
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


SWEEP = ["-m", *QUICK]


def _results(job_dir: Path) -> dict[str, bytes]:
    """A job's files but Hydra's (`.hydra/`, its log, rewritten by every launch) and the record."""
    return {k: v for k, v in _tree(job_dir).items() if k not in (RECORD, "lrtrain.log") and not k.startswith(".hydra")}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["lrtrain", "fused", "joblib"])
def test_a_sweep_run_again_reuses_the_same_jobs_and_refuses_other_ones(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    args = [*SWEEP, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"]
    r = run_lrtrain(*args, "optimizer.lr=0.001,0.003", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    results = [_results(sweep / j) for j in "01"]
    r = run_lrtrain(*args, "optimizer.lr=0.001,0.003", "trainer.progress=plain", cwd=tmp_path)  # progress: no matter
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("(the same configuration); not trained again") == 2
    assert [_results(sweep / j) for j in "01"] == results  # not trained again, not appended to
    jobs = [_tree(sweep / j) for j in "01"]
    multirun = (sweep / "multirun.yaml").read_bytes()
    r = run_lrtrain(*args, "optimizer.lr=0.01,0.03", cwd=tmp_path)
    mismatch = ["(optimizer.lr=0.001 there, 0.01 in this job)", "(optimizer.lr=0.003 there, 0.03 in this job)"]
    if launcher == "joblib":  # each job checks its dir as it starts, and joblib starts them in any order
        mismatch = [m for m in mismatch if m in r.stderr] or mismatch
    _one_line_error(r, f"holds a run of another configuration {mismatch[0]}")
    assert [_results(sweep / j) for j in "01"] == results  # the runs' results: never touched
    if launcher != "joblib":  # under joblib a job that started beside the refused one may have begun to run
        assert [_tree(sweep / j) for j in "01"] == jobs and (sweep / "multirun.yaml").read_bytes() == multirun
    r = run_lrtrain(*args, "optimizer.lr=0.01,0.03", "trainer.overwrite=true", cwd=tmp_path)  # what it advised
    assert r.returncode == 0, r.stderr
    assert OmegaConf.load(sweep / "0" / ".hydra" / "config.yaml").optimizer.lr == 0.01
    assert len((sweep / "0" / "metrics.csv").read_text().splitlines()) == 2  # one run's rows, not appended


@pytest.mark.slow
def test_a_killed_sweep_run_again_resumes_its_unfinished_job(tmp_path):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "lrtrain", *SWEEP[:1], "optimizer.lr=0.001,0.003", "trainer.max_epochs=30",
            *QUICK[1:], f"hydra.sweep.dir={sweep}"]
    killed = subprocess.Popen(args, cwd=tmp_path, env=lrtrain_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    metrics = sweep / "0" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 3):
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    r = subprocess.run(args, cwd=tmp_path, env=lrtrain_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] > 0
    steps = [row.split(",")[0] for row in (sweep / "0" / "steps.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(len(steps))]  # resumed, not appended


@pytest.mark.slow
def test_a_search_of_another_study_does_not_write_into_the_old_trials(tmp_path):
    sweep = tmp_path / "sweep"
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=1", *QUICK, f"hydra.sweep.dir={sweep}"]
    r = run_lrtrain(*search, "hydra.sweeper.study_name=a", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    trial = _tree(sweep / "0")
    r = run_lrtrain(*search, "hydra.sweeper.study_name=b", "hydra.sweeper.sampler.seed=5", cwd=tmp_path)
    _one_line_error(r, f"hydra.sweep.dir={sweep}: job 0 ({sweep / '0'}) holds a run of another configuration")
    assert _tree(sweep / "0") == trial
