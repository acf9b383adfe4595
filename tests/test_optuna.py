"""lrtrain's Optuna sweeper: persistent studies, resume after a kill, workers sharing a study, pruning, errors.

Searches run as real `lrtrain` processes; the studies are read back with Optuna's own API.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import group_options, lrtrain_env, run_lrtrain

TINY = ["trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]


def optuna_study(storage: str, name: str = "lrtrain"):
    """The study as Optuna itself loads it: an RDB URL, or a journal file path."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "://" not in storage:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage))
    return optuna.load_study(study_name=name, storage=storage)


def lrtrain_process(*overrides: str, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lrtrain", *overrides], cwd=cwd, env=lrtrain_env(),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def trial_dirs(sweep: Path) -> set[int]:
    return {int(p.name) for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()} if sweep.is_dir() else set()


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# ------------------------------------------------------------------------------------------ real searches


@pytest.mark.slow
def test_sqlite_study_survives_a_kill_and_the_same_command_finishes_it(tmp_path):
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path / 's.db'}"  # an absolute path: sqlite:////...
    search = ["hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s1",
              "hydra.sweeper.n_trials=2", "trainer.max_epochs=2", *TINY]
    first = lrtrain_process(*search, f"hydra.sweep.dir={tmp_path / 'first'}", cwd=tmp_path, log=tmp_path / "1.log")
    deadline = time.monotonic() + 240
    study = None
    while True:  # SIGKILL it while its second trial trains
        assert first.poll() is None, (tmp_path / "1.log").read_text()
        assert time.monotonic() < deadline, "the search never got to its second trial"
        if study is None and "trials so far" in (tmp_path / "1.log").read_text():
            study = optuna_study(storage, "s1")
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)} if study else {}
        owned = {t.number for t in study.get_trials(deepcopy=False) if "worker" in t.user_attrs} if study else set()
        started = (tmp_path / "first" / "1" / ".hydra").is_dir()  # the job of trial 1 is under way
        if states.get(0) == TrialState.COMPLETE and states.get(1) == TrialState.RUNNING and 1 in owned and started:
            first.send_signal(signal.SIGKILL)
            first.wait()
            break
        time.sleep(0.05)
    killed = [t.number for t in optuna_study(storage, "s1").trials if t.state == TrialState.RUNNING]
    assert killed == [1]

    again = run_lrtrain(*search, f"hydra.sweep.dir={tmp_path / 'second'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "trial 1: marked failed, the process running it is gone" in again.stdout
    trials = optuna_study(storage, "s1").trials
    assert [t.number for t in trials] == [0, 1, 2]  # the killed one kept, as failed, and not counted
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "status" not in trials[1].user_attrs
    # each process ran its trials into its own sweep dir, one folder per trial number
    assert trial_dirs(tmp_path / "first") == {0, 1} and not (tmp_path / "first" / "1" / "summary.json").exists()
    assert trial_dirs(tmp_path / "second") == {2}
    for t in (trials[0], trials[2]):
        run = Path(t.user_attrs["run_dir"])
        assert summary(run)["best_value"] == t.value and t.user_attrs["status"] == "completed"
    from omegaconf import OmegaConf

    results = OmegaConf.load(tmp_path / "second" / "optimization_results.yaml")
    best = min((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert results.best_trial == best.number and results.best_value == best.value
    assert results.trials == {"COMPLETE": 2, "FAIL": 1}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_study_and_run_n_trials_between_them(tmp_path, kind):
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else str(tmp_path / "s.journal")
    search = ["hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=shared",
              "hydra.sweeper.n_trials=3", "trainer.max_epochs=1", *TINY]
    workers = [lrtrain_process(*search, f"hydra.sweep.dir={tmp_path / w}", cwd=tmp_path, log=tmp_path / f"{w}.log")
               for w in ("a", "b")]
    for w, proc in zip("ab", workers):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{w}.log").read_text()
    trials = optuna_study(storage, "shared").trials
    ran = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(ran) == 3
    # a claim past n_trials (both asked for the last one at once) is told FAIL without running
    assert all(t.state == TrialState.FAIL and t.user_attrs["status"] == "surplus" for t in trials if t not in ran)
    a, b = trial_dirs(tmp_path / "a"), trial_dirs(tmp_path / "b")
    assert not a & b and a | b == {t.number for t in ran}  # every trial ran once, in one worker's sweep dir
    assert len({tuple(sorted(t.params.items())) for t in ran}) == 3  # the joining worker drew its own samples
    assert {t.user_attrs["worker"]["pid"] for t in ran} <= {w.pid for w in workers}
    assert "joined an existing study" in (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()


@pytest.mark.slow
def test_pruned_trials_stop_early_and_read_pruned_in_study_summary_and_report(lrtrain, tmp_path):
    from omegaconf import OmegaConf
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    # one trial at a good LR and two far too small ones, in the grid's (seeded) order: whichever runs first
    # completes (n_startup_trials=1), and at least one of the small ones is worse than the median after epoch 1
    r = lrtrain("-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.pruner.n_startup_trials=1",
                "optimizer.lr=0.01,0.00001,0.00002", "trainer.max_epochs=2", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr  # pruning is a result, not a failure
    trials = optuna_study(f"sqlite:///{sweep / 'optuna.db'}").trials
    assert len(trials) == 3 and {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED}
    rows = {row["job"]: row for row in csv.DictReader((sweep / "sweep_summary.csv").open())}
    for t in trials:
        s = summary(sweep / str(t.number))
        assert s["best_value"] == t.value == float(rows[str(t.number)]["best_value"])
        if t.state == TrialState.PRUNED:
            assert s["status"] == rows[str(t.number)]["status"] == "pruned" and s["epochs"] == 1
            assert "MedianPruner after epoch 1" in s["stop_reason"] and list(t.intermediate_values) == [0]
            assert (sweep / str(t.number) / "checkpoints" / "best.pt").is_file()  # the outputs contract holds
        else:
            assert s["status"] == "completed" and s["epochs"] == 2 and list(t.intermediate_values) == [0, 1]
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    assert f"lrtrain sweep · 3 jobs · {pruned} pruned" in r.stdout and "did not complete" not in r.stdout

    # the best trial, as the ready-to-run command the search printed, trains to the same value alone
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert f"Run it alone: {results.command}" in r.stdout
    argv = shlex.split(results.command)
    assert argv[0] == "lrtrain" and "optimizer.lr=0.01" in argv
    alone = lrtrain(*argv[1:], run_dir=tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    assert alone.summary()["best_value"] == results.best_value


@pytest.mark.parametrize("override, message", [  # the search-space syntax's own errors: in-process below
    ("optimizer.lrr=interval(0.1, 0.2)", "optimizer.lrr: unknown key; valid keys here: lr, betas, eps, amsgrad"),
    ("optimizer.lr=interval(-1, 0.1)", "optimizer.lr=-1.0: must be a finite number > 0, or auto"),
])
def test_a_bad_search_space_is_one_line_naming_the_parameter_and_creates_no_study(lrtrain, tmp_path, override,
                                                                                   message):
    sweep = tmp_path / "sweep"
    r = lrtrain("hparams_search=optuna", override, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"lrtrain: error: {message}"]
    assert "Traceback" not in r.stderr and not (sweep / "optuna.db").exists()


def _typo(key: str) -> str:
    """The key with two neighbouring letters swapped (n_trials -> n_trails)."""
    i = next(i for i in range(len(key) // 2, len(key) - 1) if key[i] != key[i + 1] and "_" not in key[i:i + 2])
    return key[:i] + key[i + 1] + key[i] + key[i + 2:]


def _sweeper_keys() -> list[str]:
    from dataclasses import fields

    from lrtrain.config import OptunaSweeperConfig

    return [f.name for f in fields(OptunaSweeperConfig) if not f.name.startswith("_")]


SWEEPER_KEYS = _sweeper_keys()


@pytest.mark.parametrize("override", [f"+hydra.sweeper.{_typo(key)}=5" for key in SWEEPER_KEYS]
                         + ["hydra.sweeper.n_trails=5"])
def test_a_typo_in_a_sweeper_key_is_one_line_naming_it(lrtrain, tmp_path, override):
    """Added with + (past the schema: once silently ignored), or not (refused as Hydra composes)."""
    sweep = tmp_path / "sweep"
    r = lrtrain("hparams_search=optuna", override, f"hydra.sweep.dir={sweep}")
    typo = override.split("=")[0].lstrip("+")
    assert (r.returncode, r.stderr.strip()) == (
        2, f"lrtrain: error: {typo}: unknown key; valid keys here: {', '.join(SWEEPER_KEYS)}")
    assert not (sweep / "optuna.db").exists()


@pytest.mark.parametrize("override, message", [
    ("hydra.sweeper.direction=up", "hydra.sweeper.direction='up': must be one of minimize, maximize"),
    ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0: must be an integer >= 1"),
    ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0: must be an integer >= 1"),
    ("hydra.sweeper.n_jobs=two", "hydra.sweeper.n_jobs: Value 'two' of type 'str' could not be converted to Integer"),
    ("hydra.sweeper.failed_value=nan", "hydra.sweeper.failed_value=nan: must be a finite number, or null"),
    ("hydra.sweeper.heartbeat_interval=0", "hydra.sweeper.heartbeat_interval=0: must be null or seconds >= 1"),
])
def test_a_sweeper_value_out_of_range_is_one_line(lrtrain, tmp_path, override, message):
    sweep = tmp_path / "sweep"
    r = lrtrain("hparams_search=optuna", override, f"hydra.sweep.dir={sweep}")
    assert (r.returncode, r.stderr.strip()) == (2, f"lrtrain: error: {message}")
    assert not (sweep / "optuna.db").exists()


# -------------------------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("text, kind, expect", [
    ("interval(0.1, 0.9)", "FloatDistribution", {"low": 0.1, "high": 0.9, "log": False}),
    ("tag(log, interval(1e-4, 1e-1))", "FloatDistribution", {"low": 1e-4, "high": 0.1, "log": True}),
    ("interval(1, 8)", "FloatDistribution", {"low": 1.0, "high": 8.0}),  # Hydra's intervals are float
    ("int(interval(1, 8))", "IntDistribution", {"low": 1, "high": 8, "log": False}),
    ("tag(log, int(interval(16, 256)))", "IntDistribution", {"low": 16, "high": 256, "log": True}),
    ("range(1, 5)", "IntDistribution", {"low": 1, "high": 4, "step": 1}),  # Hydra's range stops before 5
    ("range(0.1, 0.4, 0.1)", "FloatDistribution", {"low": 0.1, "step": 0.1}),
    ("choice(0%, 5%, 10%)", "CategoricalDistribution", {"choices": ("0%", "5%", "10%")}),
    ("sgd,adam", "CategoricalDistribution", {"choices": ("sgd", "adam")}),
    ("shuffle(range(1, 4))", "CategoricalDistribution", {}),
])
def test_search_space_syntax_becomes_optuna_distributions(text, kind, expect):
    from lrtrain.sweep.search import parse_space

    space, fixed = parse_space({"a.b": text}, ["trainer.max_epochs=3"])
    d = space["a.b"].distribution
    assert type(d).__name__ == kind and fixed == {"trainer.max_epochs": "trainer.max_epochs=3"}
    for key, value in expect.items():
        assert getattr(d, key) == pytest.approx(value) if isinstance(value, float) else getattr(d, key) == value
    if kind == "CategoricalDistribution" and "shuffle" in text:
        assert sorted(d.choices) == [1, 2, 3]


def test_command_line_wins_over_the_preset_and_a_fixed_value_leaves_the_space():
    from lrtrain.sweep.search import parse_space

    space, fixed = parse_space({"optimizer.lr": "interval(0.1, 0.2)", "scheduler.gamma": "interval(0.1, 0.9)"},
                               ["optimizer.lr=choice(1e-3, 1e-2)", "scheduler.gamma=0.5", "optimizer=sgd"])
    assert list(space) == ["optimizer.lr"] and space["optimizer.lr"].distribution.choices == (1e-3, 1e-2)
    assert space["optimizer.lr"].override(1e-3) == "optimizer.lr=0.001"
    lists = parse_space({}, ["model.hidden=choice([64],[128,64])", "+tag='a b',c"])[0]
    assert lists["model.hidden"].distribution.choices == ("[64]", "[128,64]")  # Optuna takes str, not lists
    assert lists["model.hidden"].override("[128,64]") == "model.hidden=[128,64]"  # ... the job gets the list
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(lists["tag"].override("a b")).value() == "a b"
    assert fixed == {"scheduler.gamma": "scheduler.gamma=0.5", "optimizer": "optimizer=sgd"}
    from lrtrain.errors import ConfigValueError

    with pytest.raises(ConfigValueError) as e:  # an error on the command line names the key as written there
        parse_space({}, ["optimizer.lr=tag(log, interval(0, 0.1))"])
    assert str(e.value) == "optimizer.lr='tag(log, interval(0, 0.1))': must be an interval with low > 0 on a log scale"


@pytest.mark.parametrize("text, message", [
    ("interval(1e-4", "a search space Hydra can parse"),
    ("interval(0.9, 0.1)", "an interval(low, high) with low < high"),
    ("tag(log, interval(0, 1))", "an interval with low > 0 on a log scale"),
    ("tag(lg, interval(1, 2))", "tagged log or not at all, not lg"),
    ("tag(log, choice(1, 2))", "a choice without tag(log, ...)"),
    ("choice(1, 1)", "a choice of distinct values"),
    ("range(3, 1)", "a range or choice with at least one value"),
])
def test_bad_search_space_names_the_parameter(text, message):
    from lrtrain.errors import ConfigValueError
    from lrtrain.sweep.search import parse_space

    with pytest.raises(ConfigValueError) as e:
        parse_space({"optimizer.lr": text}, [])
    assert str(e.value).startswith(f"hydra.sweeper.params.optimizer.lr={text!r}: must be {message}")


def tiny_space():
    from lrtrain.sweep.search import parse_space

    return parse_space({"x": "interval(0.0, 1.0)", "n": "range(1, 4)", "c": "a,b"}, [])[0]


@pytest.mark.parametrize("name", group_options("hydra/sweeper/sampler"))
def test_every_sampler_option_samples_the_space_seeded(name):
    """Each option, built as the sweeper builds it, proposes valid points; the same seed, the same points."""
    import optuna
    from omegaconf import OmegaConf

    from conftest import CONFIGS
    from lrtrain.sweep.search import build_sampler

    cfg = OmegaConf.load(CONFIGS / "hydra" / "sweeper" / "sampler" / f"{name}.yaml")
    space = {k: v for k, v in tiny_space().items() if name != "grid" or k != "x"}  # a grid is finite
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=build_sampler(cfg, 3, space))
        for _ in range(4):
            trial = study.ask({k: d.distribution for k, d in space.items()})
            study.tell(trial, sum(v for v in trial.params.values() if isinstance(v, (int, float))))
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]
    for params in runs[0]:
        assert params["n"] in (1, 2, 3) and params["c"] in ("a", "b") and 0 <= params.get("x", 0) <= 1


def test_cmaes_without_its_package_is_a_one_line_error(monkeypatch):
    from omegaconf import OmegaConf

    from lrtrain.errors import ConfigValueError
    from lrtrain.sweep.search import check_installed

    monkeypatch.setitem(sys.modules, "cmaes", None)  # as if not installed
    with pytest.raises(ConfigValueError, match=r"pip install 'lrtrain\[cmaes\]'"):
        check_installed(OmegaConf.create({"_target_": "optuna.samplers.CmaEsSampler"}))


@pytest.mark.parametrize("name", group_options("hydra/sweeper/pruner"))
def test_every_pruner_option_stops_trials_far_behind_the_others_but_none(name):
    import optuna
    from hydra.utils import instantiate

    from lrtrain.sweep.pruning import TrialPruning
    from lrtrain.sweep.search import _pruner_config

    # a named study: Hyperband puts trials into brackets by a hash of the study name and trial number
    study = optuna.create_study(study_name="s", pruner=instantiate(_pruner_config(name)))  # the shorthand form
    for i in range(15):  # trials whose value falls each epoch, then some far behind, as jobs report them
        bad = i >= 12
        pruning = TrialPruning(study.ask(), "val_loss", epochs=9)
        reasons = [pruning.update(epoch, {"val_loss": 50.0 if bad else 1.0 / (epoch + 1) + 0.01 * i})
                   for epoch in range(9)]
        assert reasons[-1] is None  # after the last epoch the trial has completed: never pruned then
        stopped = next((r for r in reasons if r), None)
        if bad and name != "none":
            assert stopped is None or stopped.startswith("pruned by Optuna's")
        study.tell(pruning.trial, None if stopped else 0.12 + 0.01 * i,
                   state=optuna.trial.TrialState.PRUNED if stopped else None)
    pruned = [t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    if name == "none":
        assert pruned == []
    else:
        assert set(pruned) & {12, 13, 14}


def test_an_unknown_pruner_name_lists_the_valid_ones():
    from lrtrain.errors import ConfigValueError
    from lrtrain.sweep.search import _pruner_config

    with pytest.raises(ConfigValueError) as e:
        _pruner_config("medain")
    assert str(e.value) == ("hydra.sweeper.pruner='medain': must be one of hyperband, median, none, "
                            "successive_halving")


def test_running_trials_of_dead_processes_fail_but_live_ones_stay(tmp_path, monkeypatch):
    """On this machine by pid; on another (RDB) once its heartbeat is older than two intervals; a trial whose
    process died before it wrote itself on the trial once it is old enough."""
    import os

    import optuna
    from optuna.trial import TrialState

    from lrtrain.sweep import search
    from lrtrain.sweep.pruning import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage, study_name="s")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    workers = [{"host": search.HOST, "pid": int(dead.stdout), "started": "1"},  # gone
               {"host": search.HOST, "pid": os.getpid(), "started": search._start_time(os.getpid())},  # alive
               {"host": "elsewhere", "pid": 1, "started": None},  # another machine: its heartbeat decides
               None]  # killed right after asking
    for worker in workers:
        trial = study.ask()
        if worker:
            trial.set_user_attr("worker", worker)
    storage.record_heartbeat(study.trials[2]._trial_id)
    assert search.fail_dead_workers(study) == [0]
    time.sleep(3.2)  # the other machine's heartbeat is now older than the grace period (SQLite: whole seconds)
    assert search.fail_dead_workers(study) == [2]
    monkeypatch.setattr(search, "ORPHAN_AFTER", 0)
    assert search.fail_dead_workers(study) == [3]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL, TrialState.FAIL]


OPEN_AT = """
import sys, time
import optuna, sqlalchemy
from lrtrain.sweep.pruning import open_storage
start = float(sys.argv[2])
while time.time() < start:
    pass
optuna.create_study(storage=open_storage(sys.argv[1], heartbeat_interval=60), study_name="s", load_if_exists=True)
"""


def test_workers_started_together_on_a_new_database_both_open_it(tmp_path):
    """They race to create its tables (SQLAlchemy checks, then creates): the loser retries and finds them."""
    url, start = f"sqlite:///{tmp_path / 'new.db'}", str(time.time() + 2.5)  # both imported by then
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, url, start], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert optuna_study(url, "s").trials == []


def test_pruning_never_reports_a_non_finite_value():
    import optuna

    from lrtrain.sweep.pruning import TrialPruning

    study = optuna.create_study()
    pruning = TrialPruning(study.ask(), "val_loss", epochs=3)
    assert pruning.update(0, {"val_loss": math.nan}) is None and pruning.update(1, {"val_loss": 0.5}) is None
    assert study.trials[0].intermediate_values == {1: 0.5}


def test_direction_and_grid_sampler_are_checked_before_any_job(tmp_path):
    from hydra import compose, initialize_config_dir

    from conftest import CONFIGS, config_error
    from lrtrain.config import register
    from lrtrain.sweep.search import Search

    register()

    def build(*overrides):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="config", return_hydra_config=True,
                          overrides=["hparams_search=optuna", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides])
        search = Search(cfg.hydra.sweeper, cfg, None, None)
        search._check_jobs_compose = lambda *args: None  # stop before the first job is composed
        search._open = lambda *args: pytest.fail("the checks passed: the study would open now")
        search.run(list(cfg.hydra.overrides.task))

    assert config_error(build, "hydra/sweeper/sampler=grid") == (
        "hydra.sweeper.params.optimizer.lr='tag(log, interval(1e-4, 1e-1))': must be finite with "
        "hydra/sweeper/sampler=grid: choice(...), range(...) or a,b,c")
    assert config_error(build, "trainer.monitor=val_acc", "trainer.monitor_mode=max") == (
        "hydra.sweeper.direction='minimize': must be maximize with trainer.monitor_mode=max (jobs return their best "
        "trainer.monitor)")
    with pytest.raises(pytest.fail.Exception, match="the checks passed"):
        build("trainer.monitor=val_acc", "trainer.monitor_mode=max", "hydra.sweeper.direction=maximize")


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_still_reports(lrtrain, tmp_path):
    """No trial completes (each fails to find its data): one error line at the end, no traceback, and the report
    and results are written all the same."""
    sweep = tmp_path / "sweep"
    r = lrtrain("hparams_search=optuna", "hydra.sweeper.n_trials=2", "dataset=cifar10", "dataset.root=absent",
                "dataset.download=false", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("lrtrain: error: ")]
    assert len(errors) == 1 and errors[0].startswith("lrtrain: error: 2 jobs of the sweep did not complete (job 0 "
                                                     "failed: CIFAR10 not found under absent/cifar-10-batches-py")
    assert (sweep / "sweep_summary.csv").is_file() and (sweep / "optimization_results.yaml").is_file()
    assert "best_trial" not in (sweep / "optimization_results.yaml").read_text()
