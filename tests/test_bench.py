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
