"""Benchmarks: AlgoPerf's score against hand-computed values, the `lrtrain-bench` command line, suites and
submissions as configs, time to target read from run rows, and the significance of a difference."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from lrtrain.bench.scoring import profile, read_times, score, scores, Times, TimesFileError

INF = math.inf


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrtrain.bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


# --------------------------------------------------------------------------------------------- the score


def test_ratios_are_times_over_the_best_and_inf_never_counts():
    times = Times(["a", "b", "c"], {"x": [10, 30, INF], "y": [20, 10, INF], "z": [INF, 15, INF]})
    assert times.ratios() == {"x": [1, 3, INF], "y": [2, 1, INF], "z": [INF, 1.5, INF]}


@pytest.mark.parametrize("tau,expected", [(0.99, 0), (1, 1 / 3), (2.99, 1 / 3), (3, 2 / 3), (1e9, 2 / 3)])
def test_the_profile_counts_workloads_within_tau(tau, expected):
    assert profile([1, 3, INF], tau) == expected


@pytest.mark.parametrize(
    "ratios,expected",
    [
        ([1, 1, 1], 1.0),  # fastest everywhere
        ([INF, INF], 0.0),  # an all-inf row
        ([1, INF], 0.5),  # half the workloads, at the best time
        ([2.5], 0.5),  # one workload: (4 - 2.5) / 3
        ([4.0], 0.0),  # at r_max: counted from tau = 4 on, an interval of length zero
        ([5.0, 1.0], 0.5),  # past r_max: no credit
        ([1, 2, 3.4], (3 + 2 + 0.6) / 9),
    ],
)
def test_the_score_is_the_exact_integral_of_the_step_profile(ratios, expected):
    assert score(ratios) == pytest.approx(expected, abs=1e-12)


def test_the_score_matches_a_fine_riemann_sum_and_r_max_moves_the_limit():
    ratios = [1.0, 1.37, 2.9, INF]
    n = 300_000
    riemann = sum(profile(ratios, 1 + 3 * (i + 0.5) / n) for i in range(n)) / n
    assert score(ratios) == pytest.approx(riemann, abs=1e-5)
    assert score(ratios, r_max=2.0) == pytest.approx((1 + 0.63) / 4)
    with pytest.raises(ValueError, match="r_max=1"):
        score(ratios, r_max=1)


def test_ties_share_the_best_time_and_keep_the_tables_order():
    times = Times(["a", "b"], {"p": [5, 8], "q": [5, 8], "r": [10, INF]})
    # p and q: ratio 1 on both (score 1); r: ratio 2 and inf -> (4 - 2) / (2 * 3)
    assert scores(times) == {"p": 1.0, "q": 1.0, "r": pytest.approx(1 / 3)}
    assert list(scores(Times(["a"], {"slow": [4], "fast": [2]}))) == ["fast", "slow"]


def test_a_workload_nobody_reached_still_counts_in_n():
    times = Times(["a", "b"], {"p": [1, INF], "q": [2, INF]})
    assert scores(times) == {"p": 0.5, "q": pytest.approx((4 - 2) / 6)}


# ---------------------------------------------------------------------------------------- lrtrain-bench score


def test_score_prints_best_first_and_writes_the_scores_beside_the_input(tmp_path):
    path = tmp_path / "bench_times.csv"
    path.write_text("submission,digits,regression,text\nadamw,100,40,inf\nsoap,50,80,\nlion,inf,inf,INF\n")
    r = bench("score", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # adamw: ratios 2, 1, inf -> (2 + 3) / 9; soap: 1, 2, inf -> the same; lion: nothing
    assert r.stdout.split("\n") == ["adamw 0.5556", "soap  0.5556", "lion  0.0000", ""]
    rows = (tmp_path / "bench_scores.csv").read_text().splitlines()
    assert rows == ["submission,score,ratio_digits,ratio_regression,ratio_text",
                    "adamw,0.555556,2,1,inf", "soap,0.555556,1,2,inf", "lion,0.000000,inf,inf,inf"]


def test_score_takes_r_max_and_names_any_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("submission,w\na,1\nb,1.5\n")
    r = bench("score", str(path), "--r-max", "2", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.split() == ["a", "1.0000", "b", "0.5000"]
    assert (tmp_path / "t_scores.csv").exists()


@pytest.mark.parametrize(
    "text,message",
    [
        ("submission,a,b\nx,1,zero\n", "line 2, workload b: 'zero' is not a time (a number > 0; inf or an empty "
                                       "cell: target not reached)"),
        ("submission,a\nx,0\n", "line 2, workload a: '0' is not a time"),
        ("submission,a\nx,-3\n", "line 2, workload a: '-3' is not a time"),
        ("submission,a\nx,nan\n", "line 2, workload a: 'nan' is not a time"),
        ("submission,a,b\nx,1\n", "line 2: 2 cells, the header has 3"),
        ("submission,a\nx,1\nx,2\n", "line 3: submission 'x' must be named, and once"),
        ("submission,a,a\nx,1,2\n", "line 1: workload names must be distinct and not empty"),
        ("submission,a\n", "must be a CSV with a header (submission, then one column per workload) and at least "
                           "one row"),
    ],
)
def test_a_bad_times_table_is_one_line_naming_the_cell(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TimesFileError) as e:
        read_times(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_score_of_a_bad_or_missing_file_exits_2_with_one_line(tmp_path):
    r = bench("score", str(tmp_path / "missing.csv"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == f"lrtrain-bench: {tmp_path / 'missing.csv'}: cannot be read " \
                                             "(No such file or directory)\n"
    (tmp_path / "t.csv").write_text("submission,a\nx,1\n")
    r = bench("score", str(tmp_path / "t.csv"), "--r-max", "1", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "lrtrain-bench: --r-max=1.0: must be > 1\n"


def test_score_does_not_import_torch():
    code = "import sys; from lrtrain.bench.cli import main; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ------------------------------------------------------------------------------------------ what it shows


def test_the_profile_plot_and_the_table(tmp_path):
    from rich.console import Console

    from lrtrain.bench.report import plot_profiles, table

    times = Times(["a", "b"], {"p": [10, INF], "q": [20, 30]})
    path = plot_profiles(times, tmp_path / "performance_profile.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = Console(width=200, record=True)
    console.print(table(times, scores(times), "steps", "suite mini", noise={("q", "a"): True}))
    text = console.export_text()
    assert "10 (1.00)" in text and "20 (2.00~)" in text and "not reached" in text and "30 (1.00)" in text
    assert text.index("q ") < text.index("p ")  # q: ratios 2 and 1, (2 + 3) / 6; p: 1 and inf, 3 / 6


# ------------------------------------------------------------------------------------- suites, submissions


def test_the_mini_suite_and_the_submissions_load(tmp_path):
    from lrtrain.bench.suite import load_plan

    plan, out = load_plan(["submissions=[adamw_cosine,schedulefree_adamw]", "trials=2", "hydra/launcher=fused"])
    assert [w.name for w in plan.workloads][:3] == ["digits_mlp", "digits_cnn", "regression"]
    assert out is None and plan.trials == 2 and plan.extra == ["hydra/launcher=fused"]
    digits = plan.workloads[0]
    assert digits.target.reached(0.9805) and not digits.target.reached(0.98)
    adamw = plan.submissions[0]
    assert adamw.space["optimizer.lr"] == "tag(log, interval(1e-3, 5e-2))" and "scheduler=cosine" in adamw.overrides


@pytest.mark.parametrize("suite", ["mini", "standard"])
def test_every_workload_composes_into_a_valid_lrtrain_config_with_every_submission(suite, compose):
    from lrtrain.bench.suite import load_plan

    plan, _ = load_plan([f"suite={suite}", "submissions=[adamw_cosine,schedulefree_adamw,soap_wsd]"])
    for workload in plan.workloads:
        for sub in plan.submissions:
            cfg = compose(*(o for o in plan.run_overrides if "hydra" not in o), *workload.overrides, *sub.overrides,
                          *workload.target.overrides(), f"trainer.max_steps={plan.steps(workload)}")
            assert cfg.early_stopping.stopping_threshold == workload.target.value
            dataset = next(o.split("=")[1] for o in workload.overrides if o.startswith("dataset="))
            assert cfg.dataset._target_ == f"lrtrain.data.{dataset}"  # model=gpt's default text does not win
    gpt = next(w for w in plan.workloads if "model=gpt" in w.overrides)
    assert gpt.target.metric in ("val_bpc", "val_loss")  # what a language model's validation writes
    if suite == "mini":  # an epoch of the embedded text is ~545 steps: it validates every 30 instead
        assert "trainer.val_every=30steps" in gpt.overrides and gpt.target.value == 3.3266


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["suite=huge"], "suite='huge': must be one of mini, standard"),
        (["submissions=[adamw_cosine,nope]"], "submissions='nope': must be one of adamw_cosine, "),
        (["submissions=[]"], "submissions=[]: must be a list of distinct names"),
        (["ruleset=both"], "ruleset='both': must be external or self"),
        (["trials=0"], "trials=0: must be an integer >= 1"),
        (["time=hours"], "time='hours': must be steps or seconds"),
        (["suite.workloads.digits_mlp.target.mode=up"], "suite.workloads.digits_mlp.target.mode='up': must be min or max"),
        (["suite.workloads.digits_mlp.steps=0"], "suite.workloads.digits_mlp.steps=0: must be an integer >= 1"),
        (["studies=two"], "studies='two': must be an integer >= 1"),
        (["suite.workloads.gpt.overrides=null"], "suite.workloads.gpt.overrides=None: must be a list of lrtrain"),
    ],
)
def test_bad_bench_values_name_the_key(overrides, message):
    from lrtrain.bench.suite import BenchConfigError, load_plan

    with pytest.raises(BenchConfigError) as e:
        load_plan(overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_external_tuning_is_one_qmc_sweep_dealt_to_studies_and_self_tuning_one_run_a_study(tmp_path):
    from lrtrain.bench.run import launch_args, studies
    from lrtrain.bench.suite import load_plan

    plan, _ = load_plan(["submissions=[adamw_cosine]", "trials=3", "studies=2", "seed=7"])
    workload, sub = plan.workloads[0], plan.submissions[0]
    args = launch_args(plan, sub, workload, tmp_path)
    assert args[0] == "-m" and args[-1] == f"hydra.sweep.dir={tmp_path}"
    for expected in ("hydra/sweeper/sampler=qmc", "hydra.sweeper.sampler.seed=7", "hydra.sweeper.n_trials=6",
                     "hydra.sweeper.n_jobs=6", "hydra.sweeper.direction=maximize", "early_stopping=target",
                     "early_stopping.stopping_threshold=0.9805", "trainer.max_steps=180",
                     "optimizer.lr=tag(log, interval(1e-3, 5e-2))", "hydra/sweeper/pruner=none"):
        assert expected in args
    dealt = studies(plan)
    assert len(dealt) == 2 and all(len(s) == 3 for s in dealt) and sorted(sum(dealt, [])) == list(range(6))
    plan.ruleset = "self"
    args = launch_args(plan, sub, workload, tmp_path)
    assert "trainer.max_steps=270" in args and "trainer.seed=7,8" in args and "optimizer.lr=0.02" in args
    assert not [a for a in args if "sweeper" in a] and studies(plan) == [[0], [1]]


# ---------------------------------------------------------------------------------------- time to target


def _metrics(run_dir: Path, rows: list[tuple[int, float, float]]) -> Path:
    run_dir.mkdir(parents=True)
    lines = ["epoch,step,val_loss,val_acc,seconds"]
    lines += [f"{i},{step},{1 - acc},{acc},{seconds}" for i, (step, acc, seconds) in enumerate(rows)]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run_dir


def test_time_to_target_is_the_first_validation_at_or_past_it(tmp_path):
    from lrtrain.bench.run import time_to_target
    from lrtrain.bench.suite import Target

    run = _metrics(tmp_path / "0", [(45, 0.90, 1.5), (90, 0.97, 1.25), (135, 0.96, 1.0), (180, 0.99, 1.0)])
    t = time_to_target(run, Target("val_acc", "max", 0.97))  # at 0.97 exactly, the second validation
    assert (t.steps, t.seconds, t.best) == (90, 2.75, 0.97)
    t = time_to_target(run, Target("val_loss", "min", 0.02))
    assert (t.steps, t.seconds) == (180, 4.75) and t.best == pytest.approx(0.01)
    never = time_to_target(run, Target("val_acc", "max", 0.995))
    assert (never.steps, never.seconds, never.best) == (INF, INF, 0.99)
    assert time_to_target(tmp_path / "failed", Target("val_acc", "max", 0.5)).steps == INF
    with pytest.raises(Exception, match="no column 'val_bpc'"):
        time_to_target(run, Target("val_bpc", "min", 1.0))


def test_a_study_takes_its_fastest_trial_and_the_workload_the_median_and_report_rebuilds(tmp_path, capsys):
    from omegaconf import OmegaConf

    from lrtrain.bench.run import collect, report, studies
    from lrtrain.bench.suite import load_plan

    plan, _ = load_plan(["submissions=[adamw_cosine,schedulefree_adamw]", "trials=2", "studies=3",
                         "~suite.workloads.digits_cnn", "~suite.workloads.regression", "~suite.workloads.gpt"])
    dealt = studies(plan)  # 3 studies of 2 of the 6 jobs
    # adamw: study k's trials reach the target at (k+1)*45 and never; schedulefree: at 90 in every study
    for k, jobs in enumerate(dealt):
        _metrics(tmp_path / "adamw_cosine" / "digits_mlp" / str(jobs[0]), [(45 * (k + 1), 0.99, 1.0)])
        _metrics(tmp_path / "adamw_cosine" / "digits_mlp" / str(jobs[1]), [(45, 0.5, 1.0)])
        for job in jobs:
            _metrics(tmp_path / "schedulefree_adamw" / "digits_mlp" / str(job), [(45, 0.9, 1.0), (90, 0.99, 1.0)])
    results = collect(plan, tmp_path)
    assert results["adamw_cosine", "digits_mlp"].per_study == [45, 90, 135]
    assert results["adamw_cosine", "digits_mlp"].time == 90 == results["schedulefree_adamw", "digits_mlp"].time
    OmegaConf.save(OmegaConf.create(plan.to_dict()), tmp_path / "bench.yaml")
    report(tmp_path)
    out = capsys.readouterr().out
    assert (tmp_path / "bench_times.csv").read_text().splitlines() == [
        "submission,digits_mlp", "adamw_cosine,90", "schedulefree_adamw,90"]
    assert (tmp_path / "bench_scores.csv").read_text().splitlines()[1:] == [
        "adamw_cosine,1.000000,1", "schedulefree_adamw,1.000000,1"]
    assert (tmp_path / "performance_profile.png").is_file()
    assert len((tmp_path / "bench_trials.csv").read_text().splitlines()) == 1 + 12
    # 90 - 90 with a spread on adamw's side: an interval around 0, said to be noise
    assert "digits_mlp: schedulefree_adamw - adamw_cosine = +0 steps" in out and "within noise" in out


def test_report_of_a_dir_that_is_not_a_benchmark_is_one_line(tmp_path):
    r = bench("report", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == f"lrtrain-bench: {tmp_path}: not a benchmark's output dir (no bench.yaml; `lrtrain-bench " \
                       "run` writes one)\n"
    (tmp_path / "bench.yaml").write_text("suite: mini\nskipped: {}\n")  # a plan of another version
    r = bench("report", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"lrtrain-bench: {tmp_path / 'bench.yaml'}: not a plan this lrtrain-bench reads (")


# ------------------------------------------------------------------------------------------- significance


def test_the_difference_of_two_submissions_has_welchs_interval():
    from scipy import stats

    from lrtrain.sweep.study import difference

    a, b = [10.0, 12.0, 14.0], [20.0, 21.0, 25.0, 22.0]
    d = difference(a, b, 0.95)
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d.mean == pytest.approx(12 - 22) and (d.low, d.high) == pytest.approx((welch.low, welch.high))
    assert d.high < 0  # clearly faster: not noise
    assert difference([1.0, INF], [2.0, 3.0], 0.95).low is None  # one finite study: no interval
    assert difference([INF], [1.0], 0.95) is None
    constant = difference([5.0, 5.0], [7.0, 7.0], 0.95)  # two epochs' worth each: spread unknown, not zero
    assert constant.mean == -2.0 and constant.low is None


@pytest.mark.slow
def test_lrtrain_bench_run_end_to_end_writes_the_outputs(tmp_path):
    """Two submissions on the digits MLP, one study of two QMC trials each, fused: real lrtrain sweeps."""
    r = bench("run", "submissions=[adamw_cosine,schedulefree_adamw]", "trials=2", "studies=1",
              "~suite.workloads.digits_cnn", "~suite.workloads.regression", "~suite.workloads.gpt",
              "suite.workloads.digits_mlp.target.value=0.9", f"out={tmp_path / 'b'}", "hydra/launcher=fused",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "b"
    for name in ("bench.yaml", "bench_times.csv", "bench_scores.csv", "bench_trials.csv", "performance_profile.png"):
        assert (out / name).is_file(), name
    for sub in ("adamw_cosine", "schedulefree_adamw"):
        assert sorted(p.name for p in (out / sub / "digits_mlp").iterdir() if p.name.isdigit()) == ["0", "1"]
        assert not (out / sub / "digits_mlp" / "sweep_summary.csv").exists()  # the per-sweep report is off
    times = read_times(out / "bench_times.csv")
    assert all(t % 45 == 0 for row in times.rows.values() for t in row if t != INF)  # whole epochs
    before = (out / "bench_scores.csv").read_text()
    (out / "bench_scores.csv").unlink()
    assert bench("report", str(out), cwd=tmp_path).returncode == 0
    assert (out / "bench_scores.csv").read_text() == before


def test_where_the_target_was_missed_the_best_values_are_compared_instead(tmp_path):
    from lrtrain.bench.run import collect, differences, studies
    from lrtrain.bench.suite import load_plan

    plan, _ = load_plan(["submissions=[adamw_cosine,schedulefree_adamw]", "trials=1", "studies=3",
                         "~suite.workloads.digits_cnn", "~suite.workloads.regression", "~suite.workloads.gpt"])
    for k, (job,) in enumerate(studies(plan)):  # nobody reaches 0.9805; adamw comes 0.05 closer in every study
        _metrics(tmp_path / "adamw_cosine" / "digits_mlp" / str(job), [(45, 0.95 + k / 100, 1.0)])
        _metrics(tmp_path / "schedulefree_adamw" / "digits_mlp" / str(job), [(45, 0.90 + k / 100, 1.0)])
    results = collect(plan, tmp_path)
    assert results["adamw_cosine", "digits_mlp"].best_per_study == [0.95, 0.96, 0.97]
    (d,) = differences(plan, results)
    assert (d["best"], d["submission"], d["of"], d["timed"]) == ("adamw_cosine", "schedulefree_adamw", "val_acc", False)
    assert d["difference"] == pytest.approx(-0.05) and d["high"] < 0 and not d["noise"]
