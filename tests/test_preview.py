"""`lrtrain-schedule`: the preview draws the curve a run would follow, without training."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CUSTOM, group_options
from lrtrain.durations import Timeline


def test_classic_comparison_in_one_command(tmp_path):
    """Step, exponential and cosine-with-restarts over 50 epochs from lr 0.1: one PNG, three sparklines."""
    exe = Path(sys.executable).with_name("lrtrain-schedule")
    out = tmp_path / "cmp.png"
    proc = subprocess.run([str(exe), "-m", "scheduler=step,exponential,cosine_restarts", "optimizer=sgd",
                           "optimizer.lr=0.1", "trainer.max_epochs=50", f"out={out}", "--csv", "cmp.csv"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("learning rate over 2250 steps (50 epochs of 45 steps)")
    for line, name in zip(lines[1:4], ("step", "exponential", "cosine_restarts")):
        assert line.startswith(f"scheduler={name} ") and "0.1 →" in line
        assert len([c for c in line if c in "▁▂▃▄▅▆▇█"]) == 60
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    with open(tmp_path / "cmp.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["curve", "step", "epoch", "lr"] and len(rows) == 3 * 2250
    step = [float(r["lr"]) for r in rows if r["curve"] == "scheduler=step"]
    assert step[0] == 0.1 and step[-1] == pytest.approx(1e-5) and rows[-1]["epoch"] == "49"
    assert lines[-1] == "wrote cmp.csv"
    assert not (tmp_path / "outputs").exists()  # nothing trained, no run directory


def test_bad_config_is_one_line_exit_2(tmp_path):
    exe = Path(sys.executable).with_name("lrtrain-schedule")
    proc = subprocess.run([str(exe), "scheduler=onecycle", "warmup=linear"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("lrtrain-schedule: error: warmup='linear': must be none with "
                                   "scheduler=onecycle, which ramps up by itself")
    assert not (tmp_path / "schedule.png").exists()


@pytest.mark.parametrize("overrides", [[], ["dataset.batch_size=100", "dataset.val_fraction=0.5"]])
def test_steps_per_epoch_of_digits_without_loading_them(compose, overrides):
    from lrtrain.data import digits
    from lrtrain.preview import steps_per_epoch

    cfg = compose(*overrides)
    data = digits(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    assert steps_per_epoch(cfg) == math.ceil(len(data.train) / data.batch_size)


@pytest.mark.parametrize("name", group_options("scheduler"))
def test_preview_curve_is_the_runs_schedule(compose, name):
    """Every option previews; the values are build_schedule's, step by step."""
    from lrtrain.build_schedule import build_schedule
    from lrtrain.preview import curve

    extra = {"inverse_sqrt": ["warmup=linear"], "cyclic": ["scheduler.max_lr=0.01"], "custom": CUSTOM}.get(name, [])
    cfg = compose(f"scheduler={name}", "trainer.max_epochs=3", *extra)
    values, spe = curve(cfg, 10)
    schedule = build_schedule(cfg, Timeline(10, 30))
    assert values == [schedule(k, cfg.optimizer.lr) for k in range(30)]
    assert all(v > 0 for v in values)


def test_multirun_expands_the_cross_product():
    from lrtrain.preview import expand

    runs = expand(["scheduler=step,cosine", "optimizer.lr=0.1,0.2", "trainer.max_epochs=5"], multirun=True)
    assert runs == [["scheduler=step", "optimizer.lr=0.1", "trainer.max_epochs=5"],
                    ["scheduler=step", "optimizer.lr=0.2", "trainer.max_epochs=5"],
                    ["scheduler=cosine", "optimizer.lr=0.1", "trainer.max_epochs=5"],
                    ["scheduler=cosine", "optimizer.lr=0.2", "trainer.max_epochs=5"]]
    assert expand(["scheduler.milestones=[2,5]"], multirun=True) == [["scheduler.milestones=[2,5]"]]


def test_sparkline_levels():
    from lrtrain.preview import sparkline

    assert sparkline([1.0] * 10 + [0.0] * 10, 1.0, width=4) == "██▁▁"
    assert sparkline([0.5] * 8, 1.0, width=8) == "▅" * 8  # round(0.5 * 7) = 4


@pytest.mark.parametrize("dataset,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_steps_per_epoch_of_files_on_disk_from_their_header(compose, tmp_path, monkeypatch, dataset, folder):
    """A smaller copy of MNIST (here 300 images) gives its real number of steps, read from the IDX header:
    the same as loading it, which the preview must not do."""
    import lrtrain.data
    from datafiles import write_mnist
    from lrtrain.preview import steps_per_epoch

    root = write_mnist(tmp_path, folder=folder, n_train=300)
    cfg = compose(f"dataset={dataset}", f"dataset.root={root}", "dataset.download=false", "dataset.batch_size=16")
    loaded = getattr(lrtrain.data, dataset)(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    monkeypatch.setattr(lrtrain.data, dataset, lambda **kw: pytest.fail("the preview loaded the images"))
    assert steps_per_epoch(cfg) == math.ceil(len(loaded.train) / 16) == math.ceil(270 / 16)
    missing = compose(f"dataset={dataset}", f"dataset.root={tmp_path / 'none'}")  # would download all of it
    assert steps_per_epoch(missing) == math.ceil(54000 / 128)


def test_csv_has_every_step_and_the_cycled_momentum(tmp_path):
    from lrtrain.preview import run

    assert run(["scheduler=onecycle", "optimizer=sgd", "trainer.max_epochs=2", "steps_per_epoch=10", "out=none",
                f"--csv={tmp_path / 'one.csv'}"]) == 0
    with open(tmp_path / "one.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["curve", "step", "epoch", "lr", "momentum"] and len(rows) == 20
    assert [int(r["step"]) for r in rows] == list(range(20)) and {r["epoch"] for r in rows} == {"0", "1"}
    assert float(rows[0]["momentum"]) == 0.95 and min(float(r["momentum"]) for r in rows) < 0.9


def test_csv_without_a_file_name_is_an_error():
    from lrtrain.errors import ConfigValueError
    from lrtrain.preview import run

    with pytest.raises(ConfigValueError, match=r"^--csv=None: must be a file name \(--csv steps.csv\)$"):
        run(["out=none", "--csv"])
