"""Sweeps end in a report: real `lrtrain -m` processes, the report read back from disk and rebuilt."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

# One short epoch per job, nothing written that these tests do not read.
TINY = ["trainer.max_epochs=1", "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]
PNG = b"\x89PNG\r\n\x1a\n"


def read_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "sweep_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_report_ranks_the_jobs_and_is_rebuilt_from_disk(lrtrain, tmp_path):
    sweep = tmp_path / "sweep"
    r = lrtrain("-m", "optimizer.lr=0.0001,0.01,0.001", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    for job in "012":
        assert {"summary.json", "metrics.csv", "steps.csv", ".hydra"} <= {p.name for p in (sweep / job).iterdir()}
    rows = read_rows(sweep)
    assert len(rows) == 3 and {row["status"] for row in rows} == {"completed"}
    # ranked best first by the monitored metric; each row names only the overrides that differ between jobs
    assert [float(row["best_value"]) for row in rows] == sorted(float(row["best_value"]) for row in rows)
    assert {row["overrides"] for row in rows} == {"optimizer.lr=0.0001", "optimizer.lr=0.01", "optimizer.lr=0.001"}
    assert rows[0]["overrides"] == "optimizer.lr=0.01"  # the largest of these LRs learns most in one epoch
    assert {"job", "cause", "monitor", "best_epoch", "seconds", "final_val_acc", "final_train_loss"} <= set(rows[0])
    assert "lrtrain sweep · 3 jobs" in r.stdout and "optimizer.lr=0.01" in r.stdout
    assert (sweep / "sweep.png").read_bytes()[:8] == PNG

    # lrtrain-report rebuilds the same report from the files alone, also after an interruption
    before = (sweep / "sweep_summary.csv").read_text()
    (sweep / "sweep_summary.csv").unlink()
    (sweep / "sweep.png").unlink()
    report = [str(Path(os.sys.executable).with_name("lrtrain-report"))]
    import subprocess

    again = subprocess.run(report + [str(sweep)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (sweep / "sweep_summary.csv").read_text() == before
    assert (sweep / "sweep.png").read_bytes()[:8] == PNG and "lrtrain sweep · 3 jobs" in again.stdout
    (sweep / "2" / "summary.json").unlink()  # as if job 2 had been killed
    subprocess.run(report + ["--no-plots", str(sweep)], check=True, capture_output=True)
    job2 = next(row for row in read_rows(sweep) if row["job"] == "2")
    assert job2["status"] == "interrupted" and "no summary.json" in job2["cause"]
    assert read_rows(sweep)[-1]["job"] == "2"  # jobs that did not complete rank last

    single = subprocess.run(report + [str(sweep / "0")], capture_output=True, text=True)
    assert single.returncode == 0 and (sweep / "0" / "curves.png").read_bytes()[:8] == PNG
    bad = subprocess.run(report + [str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr


def test_a_failing_job_is_recorded_and_the_others_still_run(lrtrain, tmp_path):
    sweep = tmp_path / "sweep"
    r = lrtrain("-m", "optimizer=sgd", "optimizer.lr=0.1,-1,1e6", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 1  # the sweep says that something failed
    rows = {row["job"]: row for row in read_rows(sweep)}
    assert rows["0"]["status"] == "completed" and float(rows["0"]["best_value"]) > 0
    assert rows["1"]["status"] == "failed"
    assert rows["1"]["cause"] == "optimizer.lr=-1: must be a finite number > 0, or auto"
    assert rows["2"]["status"] == "diverged" and "the training loss became nan" in rows["2"]["cause"]
    assert [row["job"] for row in read_rows(sweep)][0] == "0"
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("lrtrain: error: 2 jobs of the sweep did not complete")
    assert "job 1 failed" in last and "job 2 diverged" in last and "Traceback" not in r.stderr
    assert (sweep / "sweep.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_optuna_search_runs_its_trials_into_the_sweep_report(lrtrain, tmp_path):
    sweep = tmp_path / "sweep"
    r = lrtrain("hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    rows = read_rows(sweep)
    assert len(rows) == 3 and {row["status"] for row in rows} == {"completed"}
    for row in rows:
        params = dict(item.split("=", 1) for item in row["overrides"].split())
        assert set(params) == {"optimizer.lr", "scheduler.gamma", "warmup.length"}
        assert 1e-4 <= float(params["optimizer.lr"]) <= 1e-1
        assert 0.1 <= float(params["scheduler.gamma"]) <= 0.9
        assert params["warmup.length"] in ("0%", "5%", "10%", "20%")
    from omegaconf import OmegaConf

    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == min(float(row["best_value"]) for row in rows)


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_without_oversubscribing(lrtrain, tmp_path):
    sweep = tmp_path / "sweep"
    r = lrtrain("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.lr=0.01,0.001", *TINY,
                f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    assert "Joblib.Parallel(n_jobs=2" in r.stdout + r.stderr
    rows = read_rows(sweep)
    assert len(rows) == 2 and {row["status"] for row in rows} == {"completed"}
    import json

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for job in ("0", "1"):
        assert json.loads((sweep / job / "summary.json").read_text())["threads"] == max(1, cores // 2)


# Runs lrtrain with Hydra's composition of sweep jobs counted (on stderr at exit).
COUNT_COMPOSITIONS = """
import atexit, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
calls, compose = [], ConfigLoaderImpl.load_sweep_config
def counted(self, master_config, sweep_overrides):
    calls.append(tuple(sweep_overrides))
    return compose(self, master_config, sweep_overrides)
ConfigLoaderImpl.load_sweep_config = counted
atexit.register(lambda: print(f"compositions={len(calls)}", file=sys.stderr))
from lrtrain.cli import main
sys.argv[0] = "lrtrain"
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("launcher, compositions", [("lrtrain", 1), ("basic", 6)])
def test_default_launcher_composes_each_job_once(tmp_path, launcher, compositions):
    """Hydra's sweeper composes each job to check the batch and the basic launcher composes it again; lrtrain's
    launcher runs the checked config, and Hydra composes the group choices the jobs share once
    (lrtrain.sweep.compose). A repeated job gets its own config and trains to the same result."""
    import subprocess
    import sys

    from conftest import lrtrain_env

    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-c", COUNT_COMPOSITIONS, "-m", f"hydra/launcher={launcher}",
                        "optimizer.lr=0.01,0.01,0.001", *TINY, f"hydra.sweep.dir={sweep}"],
                       cwd=tmp_path, capture_output=True, text=True, env=lrtrain_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"compositions={compositions}" in r.stderr
    jobs = {row["job"]: row for row in read_rows(sweep)}
    assert [jobs[j]["overrides"] for j in "012"] == ["optimizer.lr=0.01", "optimizer.lr=0.01", "optimizer.lr=0.001"]
    assert jobs["0"]["best_value"] == jobs["1"]["best_value"] != jobs["2"]["best_value"]
    from omegaconf import OmegaConf

    for job in "012":
        hydra_cfg = OmegaConf.load(sweep / job / ".hydra" / "hydra.yaml").hydra
        assert hydra_cfg.job.num == int(job) and hydra_cfg.runtime.output_dir == str(sweep / job)
    from omegaconf import open_dict

    for job, lr in zip("012", ["0.01", "0.01", "0.001"]):
        # each job's .hydra/ files are what Hydra's own composition of its overrides writes
        overrides = OmegaConf.to_container(OmegaConf.load(sweep / job / ".hydra" / "overrides.yaml"))
        assert overrides[0] == f"optimizer.lr={lr}" and len(overrides) == 1 + len(TINY)
        cfg = compose_with_hydra(*overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        assert (sweep / job / ".hydra" / "config.yaml").read_text() == OmegaConf.to_yaml(cfg)


def test_remembered_configs_are_handed_out_once_as_copies():
    from lrtrain.sweep.compose import REMEMBER, ComposedOnce
    from omegaconf import OmegaConf

    class Loader:
        calls = 0

        def load_sweep_config(self, master_config, sweep_overrides):
            Loader.calls += 1
            return OmegaConf.create({"overrides": list(sweep_overrides), "num": None})

        def get_search_path(self):
            return "search path"

    loader = ComposedOnce(Loader())
    checked = loader.load_sweep_config(None, ["a=1"])
    checked.num = 99  # what the first caller does to its config does not reach the second
    run = loader.load_sweep_config(None, ["a=1"])
    assert Loader.calls == 1 and run == {"overrides": ["a=1"], "num": None}
    loader.load_sweep_config(None, ["a=1"])  # handed out once: the third request composes again
    assert Loader.calls == 2 and loader.get_search_path() == "search path"
    for i in range(REMEMBER + 10):  # a batch larger than the memory: the rest is composed again
        loader.load_sweep_config(None, [f"b={i}"])
    assert sum(map(len, loader.composed.values())) == REMEMBER
    loader.forget()
    assert not loader.composed


# Jobs of one sweep: values, an interpolation, `+`/`++`/`~` on keys (the first three share Hydra's composition),
# group choices (the same ones in another order are composed again), and jobs Hydra composes in full: a
# `hydra.*` key, a dict merged into a group's node, overrides that fail.
JOBS = [
    ["optimizer.lr=0.1", "trainer.max_epochs=2"],
    ["optimizer.lr=0.2", "trainer.max_epochs=3"],
    ["optimizer.lr=${trainer.seed}", "+report.note=x", "++optimizer.foo=1", "~logger.tensorboard"],
    ["optimizer=sgd", "optimizer.lr=0.1", "logger=[csv]", "logger.csv.plots=false"],
    ["logger=[csv]", "optimizer=sgd", "optimizer.lr=0.3", "~logger.csv.plots"],
    ["hydra.job.chdir=true", "optimizer.lr=0.3"],
    ["model={hidden: [32]}"],
    ["optimizer.nope=1"],
    ["~report.replicate_keys"],
]


def resolved(cfg) -> dict:
    """The job's config (what `.hydra/config.yaml` holds) with its interpolations resolved."""
    from omegaconf import OmegaConf

    return {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            for key, value in cfg.items_ex(resolve=True) if key != "hydra"}


def test_sweep_jobs_are_composed_as_hydra_composes_them():
    """lrtrain.sweep.compose.SweepComposer gives each job the config Hydra's full composition gives it (the same YAML,
    `hydra` section included, the same flags, the same error), composing once per set of group choices."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from conftest import CONFIGS
    from lrtrain.sweep.compose import SweepComposer
    from lrtrain.config import register

    register()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        hydra = GlobalHydra.instance()
        loader = hydra.config_loader()
        master = hydra.hydra.compose_config("config", ["hydra/launcher=fused", "hydra.sweep.dir=sweeps/${now:%f}",
                                                       "optimizer.lr=0.1,0.2"], run_mode=RunMode.MULTIRUN)
        sweep_dir = master.hydra.sweep.dir  # resolved as the sweeper does: each job's ${now:} gives this value

        class Counted:
            calls: list[list[str]] = []

            def load_sweep_config(self, master_config, sweep_overrides):
                self.calls.append(sweep_overrides)
                return loader.load_sweep_config(master_config, sweep_overrides)

            def __getattr__(self, name):
                return getattr(loader, name)

        composer = SweepComposer(Counted())
        for job in JOBS:
            try:
                ours = composer.load_sweep_config(master, job)
            except Exception as e:
                with pytest.raises(type(e)) as hydras:
                    loader.load_sweep_config(master, job)
                assert str(hydras.value) == str(e) and job in (["optimizer.nope=1"], ["~report.replicate_keys"])
                continue
            theirs = loader.load_sweep_config(master, job)
            assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(theirs) and ours == theirs, job
            assert resolved(ours) == resolved(theirs), job
            assert OmegaConf.is_struct(ours) and not OmegaConf.is_readonly(ours.hydra)
            task = [line for line in job if not line.startswith("hydra.")]
            assert OmegaConf.to_container(ours.hydra.overrides.task) == task and ours.hydra.sweep.dir == sweep_dir
    # Hydra composed: the values jobs' choices once, the sgd jobs' choices once, the hydra.* and dict jobs in
    # full; the failing jobs once more each, in full, for Hydra's error
    assert Counted.calls == [[], ["optimizer=sgd", "logger=[csv]"], ["logger=[csv]", "optimizer=sgd"],
                             JOBS[5], JOBS[6], JOBS[7], JOBS[8]]


def compose_with_hydra(*overrides: str):
    """The composed config including its `hydra` section (launcher, sweeper, callbacks)."""
    from hydra import compose, initialize_config_dir

    from conftest import CONFIGS
    from lrtrain.config import register

    register()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm"])
def test_slurm_launcher_presets_compose(launcher):
    """They cannot run without a cluster; they must compose with lrtrain's config."""
    cfg = compose_with_hydra(f"hydra/launcher={launcher}")
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.callbacks.sweep_report._target_ == "lrtrain.report.SweepReport"
    if launcher == "slurm":
        assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.hydra.launcher.name == "lrtrain"


def test_optuna_preset_searches_lr_decay_and_warmup(compose):
    cfg = compose_with_hydra("hparams_search=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_.endswith("TPESampler")
    assert sweeper.params["optimizer.lr"].startswith("tag(log,")
    assert set(sweeper.params) == {"optimizer.lr", "scheduler.gamma", "warmup.length"}
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.scheduler._target_ == "lrtrain.schedules.Step" and cfg.warmup._target_ == "lrtrain.warmup.LinearWarmup"
    compose("hparams_search=optuna")  # and the job config it makes validates


def write_run(run: Path, epochs: int, steps_per_epoch: int, scale: float, acc: bool = True) -> Path:
    """steps.csv and metrics.csv as a run writes them (only what curves.png reads)."""
    run.mkdir(parents=True)
    steps = ["step,epoch,lr,loss"] + [f"{k},{k // steps_per_epoch},{scale * 0.1 / (1 + k)!r},{scale / (1 + k)!r}"
                                      for k in range(epochs * steps_per_epoch)]
    cols = ["epoch", "step", "lr", "train_loss", "val_loss"] + (["train_acc", "val_acc"] if acc else [])
    metrics = [",".join(cols)]
    for e in range(1, epochs + 1):
        k = e * steps_per_epoch
        values = [e, k, 0.1 / k, scale / k, scale / k + (float("nan") if e == 2 else 0.0)]
        metrics.append(",".join(map(str, values + ([1 - 1 / k, 1 - 2 / k] if acc else []))))
    (run / "steps.csv").write_text("\n".join(steps) + "\n")
    (run / "metrics.csv").write_text("\n".join(metrics) + "\n")
    return run


@pytest.mark.parametrize("acc", [True, False], ids=["classification", "regression"])
def test_curves_drawn_after_another_run_equal_a_fresh_drawing(tmp_path, acc):
    """Sweep jobs refill one figure per process: what it draws must not depend on the runs drawn before."""
    from lrtrain import plots

    small = write_run(tmp_path / "small", epochs=3, steps_per_epoch=5, scale=1.0, acc=acc)
    big = write_run(tmp_path / "big", epochs=12, steps_per_epoch=40, scale=1e3, acc=acc)
    plots._CURVES.clear()
    fresh = plots.plot_curves(small).read_bytes()
    plots.plot_curves(big)
    assert plots.plot_curves(small).read_bytes() == fresh
    assert fresh[:8] == PNG and len(plots._CURVES) == 1
    (fig, _), = plots._CURVES.values()
    for ax in fig.axes:  # and the axes fit the small run's data, not the big one's
        assert 14 <= ax.get_xlim()[1] < 16
    assert fig.axes[0].get_ylim()[1] < 2 and fig.axes[-1].get_ylim()[1] < 0.2


def test_curves_drawn_by_worker_processes_equal_the_ones_drawn_here(tmp_path):
    """A fused sweep's curves.png come from lrtrain.plots.CurvesPool: the same bytes; a plot a worker could not
    draw (its pool broke) is drawn here, and one that cannot be drawn at all is reported."""
    import os

    from lrtrain import plots

    runs = [write_run(tmp_path / name, epochs=e, steps_per_epoch=5, scale=s, acc=acc)
            for name, e, s, acc in (("a", 12, 1e3, True), ("b", 2, 1.0, False))]
    curves = plots.CurvesPool(1)
    try:
        for run in runs:
            curves.add(run)
        assert curves.draw() == {}
        drawn = [(run / "curves.png").read_bytes() for run in runs]
        assert drawn == [plots.plot_curves(run).read_bytes() for run in runs]
        for run in runs:
            (run / "curves.png").unlink()
        curves.pool.submit(os._exit, 1).exception()  # a worker dies: the pool is broken
        for run in [*runs, tmp_path / "missing"]:
            curves.add(run)
        failed = curves.draw()
    finally:
        curves.close()
    assert [(run / "curves.png").read_bytes() for run in runs] == drawn
    assert list(failed) == [tmp_path / "missing"] and isinstance(failed[tmp_path / "missing"], FileNotFoundError)


def test_an_interrupted_sweep_writes_its_report_listing_the_jobs_it_did_not_finish(tmp_path):
    """SIGTERM while job 0 trains: job 0 checkpoints as interrupted, jobs 1 and 2 never start, the report is
    written all the same, and the sweep exits 143 with one line."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import lrtrain_env

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lrtrain", "-m", "optimizer.lr=0.001,0.002,0.003", "trainer.max_epochs=50",
           "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=lrtrain_env())
    deadline = time.monotonic() + 120
    while not (sweep / "0" / "steps.csv").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("lrtrain: sweep interrupted by SIGTERM")
    rows = {row["job"]: row for row in read_rows(sweep)}
    assert rows["0"]["status"] == "interrupted" and rows["0"]["cause"].startswith("SIGTERM at step ")
    assert rows["1"]["status"] == rows["2"]["status"] == "not_started"
    assert not (sweep / "1" / "steps.csv").exists() and (sweep / "1" / ".hydra" / "overrides.yaml").is_file()
    assert "did not complete" in out


def test_a_jobs_thread_count_does_not_carry_over_to_the_next(lrtrain, tmp_path):
    """Jobs of a sequential sweep share a process: job 0's trainer.num_threads=3 must not leak into job 1."""
    import json

    sweep = tmp_path / "sweep"
    r = lrtrain("-m", "trainer.num_threads=3,null", *TINY, f"hydra.sweep.dir={sweep}")  # OMP_NUM_THREADS=1
    assert r.returncode == 0, r.stderr
    threads = [json.loads((sweep / job / "summary.json").read_text())["threads"] for job in "01"]
    assert threads == [3, 1]
