"""Sweeps with seeds are studies: configurations, t-intervals, rankings and the LR-sensitivity figure, checked
against numpy/scipy on the jobs' own summary.json files from real `lrtrain -m` processes."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import config_error, lrtrain_env

# One short epoch per job, nothing written that these tests do not read.
TINY = ["trainer.max_epochs=1", "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]
PNG = b"\x89PNG\r\n\x1a\n"
# Outside torch's seed range: a job with this seed fails its validation, a real failed job.
BAD_SEED = str(2**64)
REPORT = str(Path(sys.executable).with_name("lrtrain-report"))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def completed_jobs(*sweeps: Path) -> list[tuple[dict[str, str], dict]]:
    """(overrides, summary) of every completed job, from the job folders alone."""
    from omegaconf import OmegaConf

    jobs = []
    for sweep in sweeps:
        for job in sweep.iterdir():
            if (job / ".hydra").is_dir() and (job / "summary.json").is_file():
                summary = json.loads((job / "summary.json").read_text())
                if summary["status"] == "completed":
                    overrides = dict(str(o).split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
                    jobs.append((overrides, summary))
    return jobs


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    return stats.t.interval(confidence, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))


def assert_statistics(row: dict[str, str], metric: str, values: list[float], confidence: float = 0.95) -> None:
    """The row's mean, std and interval of `metric` are numpy's and scipy's over `values`."""
    assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(values), rel=1e-12)
    if len(values) == 1:
        assert row[f"{metric}_std"] == row[f"{metric}_ci_low"] == row[f"{metric}_ci_high"] == ""
        return
    assert float(row[f"{metric}_std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert float(row["confidence"]) == confidence
    low, high = t_interval(values, confidence)
    assert float(row[f"{metric}_ci_low"]) == pytest.approx(low, rel=1e-9)
    assert float(row[f"{metric}_ci_high"]) == pytest.approx(high, rel=1e-9)


@pytest.mark.slow
def test_seeds_of_a_sweep_form_configurations_with_t_intervals(lrtrain, tmp_path):
    """Also: the sweep's callback reports with the composed config's `report` node (a 90% interval here)."""
    sweep = tmp_path / "sweep"
    r = lrtrain("-m", "optimizer.lr=1e-3,1e-2", f"trainer.seed=0,1,2,{BAD_SEED}", "report.confidence=0.9", *TINY,
                f"hydra.sweep.dir={sweep}")
    assert r.returncode == 1  # two jobs failed, and the sweep says so
    jobs = read_csv(sweep / "sweep_summary.csv")
    assert len(jobs) == 8 and sum(job["status"] == "failed" for job in jobs) == 2  # still one row per job

    rows = read_csv(sweep / "study_summary.csv")
    assert [row["rank"] for row in rows] == ["1", "2"]
    done = completed_jobs(sweep)
    for row in rows:
        lr = float(row["optimizer.lr"])
        mine = [summary for overrides, summary in done if float(overrides["optimizer.lr"]) == lr]
        assert (row["jobs"], row["n"], row["failed"], row["diverged"], row["incomplete"]) == ("4", "3", "1", "0", "0")
        assert len(mine) == 3  # the failed job is counted above and left out of the statistics
        assert_statistics(row, "best_value", [s["best_value"] for s in mine], 0.9)
        assert_statistics(row, "final_val_acc", [s["final"]["val_acc"] for s in mine], 0.9)
        assert_statistics(row, "final_train_loss", [s["final"]["train_loss"] for s in mine], 0.9)
        # lr_sensitivity.png's points, read back from the figure, are the table's
        assert float(row["sensitivity_x"]) == lr and row["sensitivity_line"] == "best val_loss"
        for metric in ("best_value", "final_val_acc"):
            assert float(row[f"sensitivity_{metric}"]) == float(row[f"{metric}_mean"])
            assert float(row[f"sensitivity_{metric}_low"]) == pytest.approx(float(row[f"{metric}_ci_low"]), rel=1e-12)
            assert float(row[f"sensitivity_{metric}_high"]) == pytest.approx(float(row[f"{metric}_ci_high"]),
                                                                             rel=1e-12)
    best, other = rows
    assert float(best["best_value_mean"]) < float(other["best_value_mean"])  # val_loss: lower is better
    apart = float(other["best_value_ci_low"]) > float(best["best_value_ci_high"])
    assert best["overlaps_best"] == "" and other["overlaps_best"] == str(not apart)
    # the metric names are summary_metrics' (what TensorBoard's HParams view is given too)
    from lrtrain.loggers import summary_metrics
    from lrtrain.summary import Summary

    names = {c[:-len("_mean")] for c in rows[0] if c.endswith("_mean")}
    assert names == set(summary_metrics(Summary.from_dict(done[0][1]))) == {"best_value", "final_train_loss", "final_val_loss",
                                                         "final_train_acc", "final_val_acc"}

    assert "lrtrain sweep · 8 jobs in 2 configurations · 2 did not complete" in r.stdout
    assert "optimizer.lr=0.01" in r.stdout and "90% t-interval" in r.stdout and "n = 3" in r.stdout
    assert r.stdout.count("failed: trainer.seed=") == 2  # each failed job's cause, below the table
    for png in ("sweep.png", "lr_sensitivity.png"):
        assert (sweep / png).read_bytes()[:8] == PNG
    assert not (sweep / "search.png").exists()


def run_report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([REPORT, *args], cwd=cwd, capture_output=True, text=True, env=lrtrain_env(), timeout=120)


@pytest.mark.slow
def test_lrtrain_report_combines_sweeps_and_counts_interrupted_jobs(lrtrain, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert lrtrain("-m", "optimizer.lr=0.01", "trainer.seed=0,1", *TINY, f"hydra.sweep.dir={a}").returncode == 0
    assert lrtrain("-m", "optimizer.lr=0.01,0.1", "trainer.seed=2", *TINY, f"hydra.sweep.dir={b}").returncode == 0
    (a / "1" / "summary.json").unlink()  # as if that job had been killed
    before = (a / "sweep_summary.csv").read_bytes()

    r = run_report(str(a), str(b), "--out", "combined", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "combined"
    assert (a / "sweep_summary.csv").read_bytes() == before  # each sweep's own report is left alone
    assert sorted(row["job"] for row in read_csv(out / "sweep_summary.csv")) == ["a/0", "a/1", "b/0", "b/1"]
    rows = {row["optimizer.lr"]: row for row in read_csv(out / "study_summary.csv")}
    assert set(rows) == {"0.01", "0.1"}
    # lr 0.01: seeds 0 and 1 from sweep a (1 interrupted), seed 2 from sweep b
    assert (rows["0.01"]["jobs"], rows["0.01"]["n"], rows["0.01"]["incomplete"]) == ("3", "2", "1")
    assert (rows["0.1"]["jobs"], rows["0.1"]["n"]) == ("1", "1")
    done = completed_jobs(a, b)
    for lr, row in rows.items():
        assert_statistics(row, "best_value", [s["best_value"] for o, s in done if o["optimizer.lr"] == lr])
    assert "4 jobs in 2 configurations · 1 did not complete" in r.stdout and "a/1 interrupted" in r.stdout
    assert (out / "lr_sensitivity.png").read_bytes()[:8] == PNG

    # --replicate-keys: the LR too, so all jobs are one configuration; without --out a dated report folder
    r = run_report(str(a), str(b), "--replicate-keys", "trainer.seed,optimizer.lr", "--no-plots", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (summary,) = tmp_path.glob("outputs/reports/*/*/study_summary.csv")
    (row,) = read_csv(summary)
    assert (row["configuration"], row["jobs"], row["n"]) == ("(defaults)", "4", "3")
    assert_statistics(row, "best_value", [s["best_value"] for _, s in done])

    r = run_report(str(a), str(b), "--by", "scheduler.gamma", "--out", "by_gamma", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "lrtrain-report: no lr_sensitivity.png by scheduler.gamma: " \
        "it is not varied between configurations (varied: optimizer.lr)"
    assert not (tmp_path / "by_gamma" / "lr_sensitivity.png").exists()
    r = run_report(str(tmp_path / "nowhere"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"lrtrain-report: error: {tmp_path / 'nowhere'}: no such folder"


@pytest.mark.slow
def test_optuna_search_plots_the_objective_against_each_parameter(lrtrain, tmp_path):
    sweep = tmp_path / "sweep"
    r = lrtrain("hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    assert (sweep / "search.png").read_bytes()[:8] == PNG
    assert not (sweep / "lr_sensitivity.png").exists()  # three searched keys: no lines to draw by
    # one trial per configuration: the table of a plain sweep, with no interval columns
    assert "lrtrain sweep · 3 jobs" in r.stdout and "configurations" not in r.stdout and "±" not in r.stdout
    assert [row["n"] for row in read_csv(sweep / "study_summary.csv")] == ["1"] * 3

    from lrtrain.sweep import report

    rows = report.sweep_rows(sweep)
    study = report.analyse(rows, report.settings_of(rows), report.searched_params([sweep], rows))
    assert study.searched == ["optimizer.lr", "scheduler.gamma", "warmup.length"]
    points = report.plot_search(study, tmp_path / "search.png")
    jobs = read_csv(sweep / "sweep_summary.csv")
    for param, drawn in points.items():
        expected = []
        for job in jobs:
            value = dict(o.split("=", 1) for o in job["overrides"].split())[param]
            expected.append((value if param == "warmup.length" else float(value), float(job["best_value"])))
        assert sorted(drawn) == sorted(expected)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("values", [[0.3], [0.3, 0.5], [0.2, 0.25, 0.4], list(np.linspace(0.1, 1.0, 10))])
def test_estimate_is_scipys_t_interval(values, confidence):
    from lrtrain.sweep.study import estimate

    e = estimate(values + [None, math.nan], confidence)  # unset and non-finite values are not data
    assert e.n == len(values) and e.mean == pytest.approx(np.mean(values), rel=1e-12)
    if len(values) == 1:
        assert e.std is e.low is e.high is None  # n = 1: no interval, said so
        return
    assert e.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert (e.low, e.high) == pytest.approx(t_interval(values, confidence), rel=1e-9)


def test_identical_replicates_have_an_interval_of_width_zero():
    from lrtrain.sweep.study import estimate

    e = estimate([0.5, 0.5, 0.5], 0.95)
    assert (e.n, e.mean, e.std, e.low, e.high) == (3, 0.5, 0.0, 0.5, 0.5)
    assert estimate([None, math.inf], 0.95) is None


@pytest.mark.parametrize("mode", ["min", "max"])
def test_configurations_rank_by_mean_and_overlap_with_the_best(mode):
    from lrtrain.sweep.study import group, rank

    sign = 1 if mode == "min" else -1
    jobs = []
    for lr, values in ((0.1, [5.0, 5.2, 5.4]), (0.01, [1.0, 1.1, 1.2]), (0.001, [1.1, 1.3, 1.5]),
                       (1.0, [9.0])):
        for seed, v in enumerate(values):
            jobs.append({"settings": {"lr": lr, "seed": seed}, "status": "completed", "best_value": sign * v})
    jobs.append({"settings": {"lr": 0.01, "seed": 9}, "status": "diverged", "best_value": sign * 0.0})
    jobs.append({"settings": {"lr": 10.0, "seed": 0}, "status": "failed"})
    ranked = rank(group(jobs, ["lr"], ["best_value"], 0.95), "best_value", mode)
    assert [c.values["lr"] for c in ranked] == [0.01, 0.001, 0.1, 1.0, 10.0]
    assert [c.rank for c in ranked] == [1, 2, 3, 4, 5]
    best = ranked[0]
    assert (best.n, len(best.jobs), best.count("diverged")) == (3, 4, 1)  # the diverged job is not averaged
    assert best.stats["best_value"].mean == pytest.approx(sign * 1.1)
    # 0.001's interval overlaps the best one's, 0.1's does not; 1.0 (n = 1) and 10.0 (nothing) cannot say
    assert [c.overlaps_best for c in ranked] == [None, True, False, None, None]
    assert ranked[-1].stats == {} and ranked[-1].count("failed") == 1


@pytest.mark.parametrize("override,message", [
    ("report.band=iqr", "report.band='iqr': must be one of std, minmax"),
    ("report.confidence=95", "report.confidence=95.0: must be in (0, 1), e.g. 0.95"),
])
def test_bad_report_settings_name_the_key(compose, override, message):
    assert config_error(compose, override) == message


def test_report_settings_come_from_the_composed_config_or_the_yaml(compose):
    """The `report` node as SweepReport reads it; a sweep run without one gets configs/report/default.yaml."""
    from lrtrain.sweep.report import report_settings

    cfg = compose("report.x=scheduler.gamma", "report.replicate_keys=[trainer.seed,dataset.split_seed]")
    settings = report_settings(cfg.report)
    assert (settings.x, settings.replicate_keys) == ("scheduler.gamma", ["trainer.seed", "dataset.split_seed"])
    assert report_settings() == report_settings(compose().report)


# ---------------------------------------------------------------------------------- LR transfer across width


@pytest.mark.parametrize("mode", ["min", "max"])
def test_each_widths_best_lr_and_its_grid_steps_from_the_smallest(mode):
    """Two panels (sp, mup) of three widths: the best mean LR per width, and its shift in steps of the LR grid."""
    from lrtrain.sweep.study import group, transfer

    sign = 1 if mode == "min" else -1
    best = {("sp", 64): 1e-2, ("sp", 256): 3e-3, ("sp", 1024): 1e-3, ("mup", 64): 1e-2, ("mup", 256): 1e-2,
            ("mup", 1024): 3e-2}
    grid = [1e-3, 3e-3, 1e-2, 3e-2]
    jobs = []
    for (p, width), lr_best in best.items():
        for lr in grid:
            for seed in range(3):  # the loss grows with the distance from the best LR in grid steps
                loss = 1.0 + abs(grid.index(lr) - grid.index(lr_best)) + 0.01 * seed
                jobs.append({"settings": {"p": p, "hidden": [width, width], "lr": lr, "seed": seed},
                             "status": "completed", "best_value": sign * loss})
    configs = group(jobs, ["p", "hidden", "lr"], ["best_value"], 0.95)
    rows = transfer(configs, "hidden", "lr", ["p"], "best_value", mode)
    assert [(r.panel, r.width, r.lr, r.shift) for r in rows] == [
        (("sp",), 64, 1e-2, 0), (("sp",), 256, 3e-3, -1), (("sp",), 1024, 1e-3, -2),
        (("mup",), 64, 1e-2, 0), (("mup",), 256, 1e-2, 0), (("mup",), 1024, 3e-2, 1)]
    assert rows[0].best.stats["best_value"].mean == pytest.approx(sign * 1.01)


@pytest.mark.slow
def test_a_sweep_over_width_and_lr_reports_the_transfer_with_fused_widths(lrtrain, tmp_path):
    """A fused sweep over two widths, two LRs and two seeds: each width's jobs fuse into one model, and the
    report adds lr_transfer.png and transfer.csv, whose best LR per width is study_summary.csv's."""
    sweep = tmp_path / "sweep"
    r = lrtrain("-m", "hydra/launcher=fused", "model.parametrization=mup", "model.base_width=16",
                "model.hidden=[16,16],[64,64]", "optimizer.lr=1e-3,1e-2", "trainer.seed=0,1", *TINY,
                f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    assert "fused: jobs 0, 1, 2, 3 as one model of 4 replicas" in r.stdout
    assert "fused: jobs 4, 5, 6, 7 as one model of 4 replicas" in r.stdout
    assert (sweep / "lr_transfer.png").read_bytes().startswith(PNG)
    rows = read_csv(sweep / "transfer.csv")
    assert [row["width"] for row in rows] == ["16", "64"]
    study = read_csv(sweep / "study_summary.csv")
    for row in rows:
        mine = [s for s in study if s["model.hidden"] == row["model.hidden"]]
        top = min(mine, key=lambda s: float(s["best_value_mean"]))
        assert row["best_optimizer.lr"] == top["optimizer.lr"]
        assert float(row["mean"]) == float(top["best_value_mean"]) and row["n"] == "2"
    assert rows[0]["grid_steps_from_smallest"] == "0"
