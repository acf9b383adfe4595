"""lrtrain's Ray Tune sweeper (hydra/sweeper=ray_tune) and seeds inside the objective (both sweepers).

The fast tests check the search-space mapping against Tune's own domains, the one-line errors and the message
without Ray installed. The slow ones run real `lrtrain` searches on a local Ray limited to 2 CPUs, with tiny
trials (digits, a few epochs), and read the results back with lrtrain's readers, Optuna's and Tune's.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import lrtrain_env, run_lrtrain

TINY = ["trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]
RAY = ["hydra.sweeper.num_cpus=2"]  # a local Ray on the 2 cores the tests share


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def trial_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


# ---------------------------------------------------------------------------------------------- fast


@pytest.mark.parametrize("text, kind, low, high, log", [
    ("tag(log, interval(1e-4, 1e-1))", "Float", 1e-4, 0.1, True),
    ("interval(0.1, 0.9)", "Float", 0.1, 0.9, False),
    ("int(interval(1, 8))", "Integer", 1, 9, False),  # Tune's upper bound is exclusive: 8 can be drawn
    ("tag(log, int(interval(16, 256)))", "Integer", 16, 257, True),
])
def test_intervals_map_to_tune_domains_with_the_same_bounds_and_scale(text, kind, low, high, log):
    from ray.tune.search.sample import LogUniform

    from lrtrain.sweep.search import parse_space
    from lrtrain.sweep.ray_tune import tune_domain

    space, _ = parse_space({"k": text}, [])
    domain = tune_domain(space["k"])
    assert type(domain).__name__ == kind
    assert (domain.lower, domain.upper) == (low, high)
    assert isinstance(domain.get_sampler(), LogUniform) == log
    values = domain.sample(size=2000, random_state=0)
    assert all(low <= v < high for v in values)
    if kind == "Integer":  # both ends of the override's closed interval come up
        assert {low, high - 1} <= set(values)


@pytest.mark.parametrize("text, values", [
    ("choice(0%, 5%, 10%)", {"0%", "5%", "10%"}),
    ("sgd,adam", {"sgd", "adam"}),
    ("range(1, 5)", {1, 2, 3, 4}),  # Hydra's range stops before 5; Tune's qrandint includes its upper bound
    ("range(2, 10, 4)", {2, 6}),
])
def test_finite_spaces_draw_exactly_their_values(text, values):
    from lrtrain.sweep.search import parse_space
    from lrtrain.sweep.ray_tune import tune_domain

    space, _ = parse_space({"k": text}, [])
    drawn = tune_domain(space["k"]).sample(size=500, random_state=0)
    assert set(drawn) == values


def test_a_drawn_value_is_written_back_as_the_override_hydra_reads():
    from lrtrain.sweep.search import parse_space
    from lrtrain.sweep.ray_tune import tune_domain

    space, fixed = parse_space({"optimizer.lr": "tag(log, interval(1e-4, 1e-1))", "scheduler": "cosine,wsd"},
                               ["trainer.max_epochs=2"])
    assert fixed == {"trainer.max_epochs": "trainer.max_epochs=2"}
    lr = tune_domain(space["optimizer.lr"]).sample(random_state=1)
    assert space["optimizer.lr"].override(lr) == f"optimizer.lr={lr!r}"
    assert space["scheduler"].override("wsd") == "scheduler=wsd"


@pytest.mark.parametrize("own_steps, own_validations", [(135, 3), (90, 2), (45, 1)],
                         ids=["ahead-of-the-donor", "level-with-it", "behind-it"])
def test_an_exploit_keeps_the_trials_rows_before_the_donors_step_and_no_row_twice(tmp_path, own_steps,
                                                                                  own_validations):
    """The donor paused after 90 updates: its continuation writes steps.csv's row 90 on and metrics.csv's next
    validation, so the trial keeps steps 0..89 and validations at steps <= 90 of its own, wherever it was."""
    import torch
    from types import SimpleNamespace

    from lrtrain.sweep.ray_tune import pbt_state

    with (tmp_path / "steps.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["step", "epoch", "lr", "loss"])
        out.writerows([s, s // 45, 0.01, 1.0] for s in range(own_steps))
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["epoch", "step", "lr", "val_loss"])
        out.writerows([v, 45 * v, 0.01, 1.0] for v in range(1, own_validations + 1))
    link = SimpleNamespace(values={"optimizer.lr": 0.02}, exploit={"from_trial": 3, "from_step": 90})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    state = pbt_state(link, optimizer, {"optimizer": {"lr": 0.01}}, tmp_path, donor_step=90)
    assert state.rows == (min(own_steps, 90), min(own_validations, 2))
    assert state.exploits == [{"from_trial": 3, "from_step": 90, "at_step": 90, "old": {},
                               "new": {"optimizer.lr": 0.02}}]
    assert state.factors == {"lr": 2.0}


def test_without_ray_the_sweeper_says_in_one_line_how_to_install_it(tmp_path):
    """Ray made unimportable in the lrtrain process (None in sys.modules), not uninstalled."""
    code = ("import sys; sys.modules['ray'] = None; from lrtrain.cli import main; "
            f"sys.argv = ['lrtrain', '-m', 'hydra/sweeper=ray_tune', 'optimizer.lr=interval(0.01, 0.1)', "
            f"'hydra.sweep.dir={tmp_path / 'sweep'}']; main()")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=lrtrain_env())
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "lrtrain: error: hydra/sweeper='ray_tune': must be installed first: pip install 'lrtrain[ray]' "
        "(or uv sync --extra ray)"]


@pytest.mark.parametrize("overrides, message", [
    (["hydra.sweeper.num_sample=3"], "num_sample"),  # a typo: the schema knows no such key
    (["hydra.sweeper.num_samples=three"], "num_samples"),
    (["hydra.sweeper.scheduler=hyperband"], "hydra.sweeper.scheduler='hyperband': must be fifo | asha | pbt"),
    (["hydra.sweeper.search_alg=bohb"], "hydra.sweeper.search_alg='bohb': must be random | optuna"),
    (["hydra.sweeper.seeds=2", "hydra.sweeper.scheduler=asha"],
     "hydra.sweeper.seeds=2: must be 1 with scheduler=asha"),
    (["hydra.sweeper.seeds=0"], "hydra.sweeper.seeds=0: must be at least 1"),
    (["hydra.sweeper.resources_per_trial.gpu=-1"], "hydra.sweeper.resources_per_trial.gpu=-1"),
    (["hydra.sweeper.scheduler=pbt", "scheduler=cosine,constant"],
     "scheduler='cosine,constant': must be a search over an optimizer key"),
    (["hydra.sweeper.scheduler=pbt", "trainer.seed=range(0,3)"],
     "trainer.seed='range(0,3)': must be a search over an optimizer key"),
    (["optimizer.lrr=interval(0.1, 0.2)"], "optimizer.lrr: unknown key"),
])
def test_bad_settings_fail_in_one_line_naming_the_key_before_ray_starts(lrtrain, tmp_path, overrides, message):
    sweep = tmp_path / "sweep"
    space = [] if any(o.startswith(("optimizer.", "+hydra.sweeper.pbt")) for o in overrides) else \
        ["optimizer.lr=interval(0.01, 0.1)"]
    space = [] if "scheduler=cosine,constant" in overrides else space
    r = lrtrain("-m", "hydra/sweeper=ray_tune", *space, *overrides, f"hydra.sweep.dir={sweep}")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrtrain: error: ") and message in lines[0], r.stderr
    assert not (sweep / "ray_tune").exists()


def test_optuna_seeds_with_a_pruner_is_a_one_line_error(lrtrain, tmp_path):
    r = lrtrain("hparams_search=optuna", "hydra.sweeper.seeds=3", f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "lrtrain: error: hydra.sweeper.seeds=3: must be 1 with a pruner (hydra.sweeper.pruner=MedianPruner), or "
        "seeds>1 with hydra/sweeper/pruner=none"]


# ---------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_a_random_search_writes_its_trials_as_sweep_jobs_and_a_rerun_resumes_it(lrtrain, tmp_path):
    sweep = tmp_path / "sweep"
    search = ["-m", "hydra/sweeper=ray_tune", "optimizer.lr=tag(log, interval(1e-3, 1e-1))",
              "hydra.sweeper.num_samples=4", "trainer.max_epochs=2", *RAY, *TINY, f"hydra.sweep.dir={sweep}"]
    r = lrtrain(*search, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = trial_dirs(sweep)
    assert [t.name for t in trials] == ["0", "1", "2", "3"]
    lrs = set()
    for t in trials:  # each trial an ordinary run: the whole outputs contract
        s = summary(t)
        assert s["status"] == "completed" and s["epochs"] == 2
        assert len(rows(t / "metrics.csv")) == 2 and (t / "checkpoints" / "last.pt").is_file()
        lrs.add(float(rows(t / "steps.csv")[0]["lr"]))
    assert len(lrs) == 4 and all(1e-3 <= lr <= 1e-1 for lr in lrs)
    report = rows(sweep / "sweep_summary.csv")
    assert len(report) == 4 and {row["status"] for row in report} == {"completed"}
    results = (sweep / "optimization_results.yaml").read_text()
    best = min(trials, key=lambda t: summary(t)["best_value"])
    assert f"best_trial: {best.name}\n" in results
    # Tune's own record of the search, in the sweep dir
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(sweep / "ray_tune"))
    assert len(analysis.trials) == 4 and {t.status for t in analysis.trials} == {"TERMINATED"}

    again = lrtrain(*search, timeout=900)  # Tune's restore: nothing left to run, no job trained again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the search" in again.stdout + again.stderr
    assert [t.name for t in trial_dirs(sweep)] == ["0", "1", "2", "3"]
    assert all(summary(t)["status"] == "completed" and summary(t).get("resumed_from_step") is None for t in trials)


@pytest.mark.slow
def test_asha_stops_a_bad_lr_early_and_its_job_ends_pruned(lrtrain, tmp_path):
    sweep = tmp_path / "sweep"
    r = lrtrain("hparams_search=ray_asha", "hydra.sweeper.params.scheduler=constant",
                # one trial at a time, drawn with seed 0: 0.05 first, then the worse LRs, which ASHA can cut
                "optimizer.lr=choice(0.000001, 0.0003, 0.05)", "hydra.sweeper.num_samples=6",
                "hydra.sweeper.max_concurrent_trials=1", "hydra.sweeper.asha.reduction_factor=2",
                "trainer.max_epochs=4", *RAY, *TINY, f"hydra.sweep.dir={sweep}", timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = {t: summary(t) for t in trial_dirs(sweep)}
    assert len(jobs) == 6
    pruned = [t for t, s in jobs.items() if s["status"] == "pruned"]
    assert pruned, {t.name: s["status"] for t, s in jobs.items()}
    for t in pruned:
        assert float(rows(t / "steps.csv")[0]["lr"]) < 0.05  # a bad LR is stopped, never the good one
        assert len(rows(t / "metrics.csv")) < 4 and "Ray Tune's scheduler" in jobs[t]["stop_reason"]
    assert any(s["status"] == "completed" and s["epochs"] == 4 for s in jobs.values())
    assert {row["status"] for row in rows(sweep / "sweep_summary.csv")} <= {"completed", "pruned"}


@pytest.mark.slow
def test_pbt_exploits_and_the_trial_continues_from_the_donors_checkpoint_with_the_new_lr(lrtrain, tmp_path):
    import torch

    sweep = tmp_path / "sweep"
    r = lrtrain("hparams_search=pbt", "hydra.sweeper.num_samples=4", "trainer.max_epochs=4",
                "optimizer.lr=tag(log, interval(1e-5, 1e-1))",
                "hydra.sweeper.pbt.quantile_fraction=0.5", *RAY, *TINY, f"hydra.sweep.dir={sweep}", timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = {t: summary(t) for t in trial_dirs(sweep)}
    exploits = [(t, e) for t, s in jobs.items() for e in s["pbt"]["exploits"]]
    assert exploits, "no trial exploited another"
    assert all(s["status"] == "completed" and s["epochs"] == 4 for s in jobs.values())
    for t, s in jobs.items():
        steps = rows(t / "steps.csv")
        numbers = [int(row["step"]) for row in steps]
        assert numbers == sorted(set(numbers))  # one row per step, the rows after an exploit from its step on
        made = s["pbt"]["exploits"]
        for i, e in enumerate(made):
            assert e["at_step"] == e["from_step"] and str(e["from_trial"]) != t.name
            # rows an exploit's continuation wrote stay unless a later exploit took the trial back before them
            if any(o["at_step"] >= e["at_step"] for o in made[:i]) or any(o["at_step"] <= e["at_step"]
                                                                          for o in made[i + 1:]):
                continue
            after = next(row for row in steps if int(row["step"]) == e["at_step"])
            # the trial's own last row before it (a trial behind its donor has a gap up to the donor's step)
            before = [row for row in steps if int(row["step"]) < e["at_step"]][-1]
            assert float(after["lr"]) == pytest.approx(e["new"]["optimizer.lr"], rel=1e-12)
            assert float(before["lr"]) == pytest.approx(e["old"]["optimizer.lr"] or float(steps[0]["lr"]),
                                                        rel=1e-12)
    # the last exploit of each trial: its final weights descend from the donor's; the optimizer's LR is its own
    t, e = exploits[-1]
    ckpt = torch.load(t / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 * int(rows(t / "metrics.csv")[0]["step"])
    assert ckpt["config"]["optimizer"]["lr"] == pytest.approx(float(rows(t / "steps.csv")[0]["lr"]))
    assert (sweep / "pbt_lr.png").is_file()


@pytest.mark.slow
def test_seeds_train_each_trial_twice_and_tune_gets_the_mean(lrtrain, tmp_path):
    sweep = tmp_path / "sweep"
    r = lrtrain("-m", "hydra/sweeper=ray_tune", "optimizer.lr=choice(0.01, 0.03)", "hydra.sweeper.num_samples=2",
                "hydra.sweeper.seeds=2", "trainer.max_epochs=1", *RAY, *TINY, f"hydra.sweep.dir={sweep}",
                timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(sweep / "ray_tune"))
    for trial in analysis.trials:
        t = sweep / str(int(trial.trial_id.rsplit("_", 1)[1]))
        jobs = sorted(p for p in t.iterdir() if p.is_dir())
        assert [p.name for p in jobs] == ["0", "1"]
        assert [summary(p)["seed"] for p in jobs] == [0, 1]
        values = [summary(p)["best_value"] for p in jobs]
        assert trial.last_result["val_loss"] == pytest.approx(sum(values) / 2, rel=1e-12)
    report = rows(sweep / "sweep_summary.csv")  # the report sees the 4 jobs, one configuration per LR drawn
    assert len(report) == 4
    configurations = rows(sweep / "study_summary.csv")
    assert len(configurations) == len({trial.config["optimizer.lr"] for trial in analysis.trials})
    assert sum(int(c["n"]) for c in configurations) == 4


@pytest.mark.slow
def test_optuna_seeds_tell_the_mean_of_the_seeds(lrtrain, tmp_path):
    import optuna

    sweep = tmp_path / "sweep"
    r = lrtrain("hparams_search=optuna", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=2",
                "hydra.sweeper.seeds=2", "trainer.max_epochs=1", *TINY, f"hydra.sweep.dir={sweep}", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="lrtrain", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert len(study.trials) == 2
    for trial in study.trials:
        jobs = [sweep / str(trial.number) / str(k) for k in (0, 1)]
        values = [summary(p)["best_value"] for p in jobs]
        assert [summary(p)["seed"] for p in jobs] == [0, 1]
        assert trial.value == pytest.approx(sum(values) / 2, rel=1e-12)


@pytest.mark.slow
def test_mlflow_gets_a_parent_run_and_a_child_per_trial_from_concurrent_trials(lrtrain, tmp_path):
    """Two trials at a time start on a new SQLite store: each creates the store, the experiment and the parent
    run at once (before the store's lock, one failed with "table ... already exists")."""
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    r = lrtrain("-m", "hydra/sweeper=ray_tune", "optimizer.lr=tag(log, interval(1e-3, 1e-1))",
                "hydra.sweeper.num_samples=3", "hydra.sweeper.max_concurrent_trials=2", "trainer.max_epochs=1",
                *RAY, "trainer.progress=none", "logger=[csv,mlflow]", f"hydra.sweep.dir={sweep}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.data.tags["lrtrain.job"]: run for run in runs if "mlflow.parentRunId" in run.data.tags}
    assert len(parents) == 1 and sorted(children) == ["0", "1", "2"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parents[0].info.run_id}
    for job, child in children.items():  # each child is its trial's run: its LR and its final validation
        assert child.info.status == "FINISHED"
        assert float(child.data.params["optimizer.lr"]) == float(rows(sweep / job / "steps.csv")[0]["lr"])
        assert child.data.metrics["val_loss"] == pytest.approx(float(rows(sweep / job / "metrics.csv")[-1]["val_loss"]))
    assert parents[0].info.status == "FINISHED"
    assert "sweep_summary.csv" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


@pytest.mark.slow
def test_a_failed_trial_does_not_stop_the_search(lrtrain, tmp_path):
    """A trial whose job fails (an LR that diverges at once) is an errored trial; the others complete."""
    sweep = tmp_path / "sweep"
    # hydra.sweeper.seed=0 draws the second value three times, then the first: both come up in 4 samples
    r = lrtrain("-m", "hydra/sweeper=ray_tune", "optimizer=sgd", "optimizer.lr=choice(0.01, 1e9)",
                "hydra.sweeper.num_samples=4",
                "trainer.max_epochs=1", *RAY, *TINY, f"hydra.sweep.dir={sweep}", timeout=900)
    statuses = {t.name: summary(t)["status"] for t in trial_dirs(sweep)}
    assert len(statuses) == 4 and "completed" in statuses.values(), statuses
    assert r.returncode != 0 and "diverged" in set(statuses.values())  # the sweep says a job did not complete


@pytest.mark.slow
def test_ctrl_c_stops_the_search_writes_the_report_exits_130_and_a_rerun_finishes_it(tmp_path):
    sweep = tmp_path / "sweep"
    search = ["-m", "hydra/sweeper=ray_tune", "optimizer.lr=tag(log, interval(1e-3, 1e-1))",
              "hydra.sweeper.num_samples=3", "hydra.sweeper.max_concurrent_trials=1", "trainer.max_epochs=30",
              *RAY, *TINY, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, "-m", "lrtrain", *search], cwd=tmp_path, env=lrtrain_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (sweep / "0" / "metrics.csv").is_file() and time.time() < deadline:
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    assert (sweep / "sweep_summary.csv").is_file()
    first = summary(sweep / "0")
    assert first["status"] == "interrupted"
    r = run_lrtrain(*[a.replace("trainer.max_epochs=30", "trainer.max_epochs=30") for a in search], cwd=tmp_path,
                    timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary(sweep / "0")["status"] == "completed" and summary(sweep / "0")["resumed_from_step"] > 0
    assert len(trial_dirs(sweep)) == 3


@pytest.mark.slow
def test_an_existing_cluster_started_with_ray_start_runs_the_search(lrtrain, tmp_path):
    """hydra.sweeper.address: a `ray start --head` on this machine stands in for a cluster's head node."""
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="lrt-ray-", dir="/tmp")  # Ray's sockets need a short path
    no_token = {"RAY_AUTH_MODE": "disabled"}  # a cluster of one machine, in a test: no token to hand around
    head = subprocess.Popen([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2", "--block",
                             "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                            env=lrtrain_env(no_token), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sweep = tmp_path / "sweep"
        deadline = time.time() + 120
        r = None
        while time.time() < deadline:  # the head takes seconds to listen
            r = lrtrain("-m", "hydra/sweeper=ray_tune", "optimizer.lr=choice(0.01, 0.03)",
                        "hydra.sweeper.num_samples=2", f"hydra.sweeper.address=127.0.0.1:{port}",
                        "trainer.max_epochs=1", *TINY, f"hydra.sweep.dir={sweep}", timeout=600, env=no_token)
            if "must be a Ray cluster this process can join" not in r.stderr:
                break
            time.sleep(3)
        assert r is not None and r.returncode == 0, r.stderr[-3000:]
        assert f"the Ray cluster at 127.0.0.1:{port}" in r.stdout + r.stderr
        assert [summary(t)["status"] for t in trial_dirs(sweep)] == ["completed", "completed"]
    finally:
        head.send_signal(signal.SIGTERM)  # --block: the head stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
