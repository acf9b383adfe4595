"""Schedules end to end: every option trains from the CLI, and steps.csv's lr is the schedule, step by step.

Each run's schedule is rebuilt in-process from the run's own `.hydra/config.yaml` with `build_schedule` and
replayed alongside metrics.csv (observing each epoch's row after its steps, as the loop does), so metric-driven
schedules (plateau) are checked as exactly as pure ones. The loop records the LR the optimizer stepped with.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import group_options
from lrtrain.build_schedule import build_schedule
from lrtrain.durations import Timeline

# one torch thread: several runs share the test machine's cores, and oversubscribed threads slow tiny models 100x
QUIET = ["trainer.progress=none", "logger=[csv]", "logger.csv.plots=false", "trainer.num_threads=1"]
SPE = math.ceil(round(1797 * 0.8) / 32)  # digits: 45 steps per epoch


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def replay(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, recorded lr, schedule's lr) for every step of a finished run."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    steps, metrics = _rows(run_dir / "steps.csv"), _rows(run_dir / "metrics.csv")
    total = cfg.trainer.max_steps or cfg.trainer.max_epochs * SPE
    schedule = build_schedule(cfg, Timeline(SPE, total))
    out = []
    for row in metrics:
        epoch = int(row["epoch"])
        for s in (s for s in steps if int(s["epoch"]) == epoch):
            out.append((int(s["step"]), float(s["lr"]), schedule(int(s["step"]), cfg.optimizer.lr)))
        schedule.observe(epoch, {k: float(v) for k, v in row.items()})
    assert len(out) == len(steps) == total
    return out


@pytest.mark.slow
def test_every_schedule_trains_from_the_cli_both_intervals(lrtrain, tmp_path):
    # inverse_sqrt needs a warmup (below); custom needs a class (test_custom_schedule_from_pythonpath)
    names = [n for n in group_options("scheduler") if n not in ("inverse_sqrt", "custom")]
    r = lrtrain("-m", f"scheduler={','.join(names)}", "scheduler.interval=step,epoch", "trainer.max_steps=60",
                *QUIET, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.returncode == 0, r.stderr
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"), key=lambda p: int(p.name))
    assert len(jobs) == 2 * len(names)
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed", job
        for step, recorded, expected in replay(job):
            assert recorded == expected, f"{job.name} step {step}"


@pytest.mark.slow
def test_warmup_kinds_compose_and_nonsense_is_refused(lrtrain, tmp_path):
    r = lrtrain("-m", "scheduler=inverse_sqrt,wsd,cosine_restarts", "warmup=linear,exponential,constant",
                "trainer.max_epochs=3", *QUIET, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"), key=lambda p: int(p.name))
    assert len(jobs) == 9
    for job in jobs:
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        summary = json.loads((job / "summary.json").read_text())
        if "inverse_sqrt" in overrides and "warmup=linear" not in overrides:
            assert summary["status"] == "failed"
            assert "must be linear with a length > 0 for scheduler=inverse_sqrt" in summary["stop_reason"]
            continue
        assert summary["status"] == "completed", (overrides, r.stderr)
        lrs = replay(job)
        assert all(recorded == expected for _, recorded, expected in lrs), overrides
        assert 0 < lrs[0][1] < max(lr for _, lr, _ in lrs)  # a ramp from above 0


def test_plateau_after_warmup_reduces_from_the_next_step(lrtrain):
    """Warmup + plateau in a real run: epochs inside warmup are ignored; a stalled epoch after it cuts the LR
    from the next optimizer step on; steps.csv records exactly what the optimizer used."""
    # threshold=0.9 (rel): an epoch counts as an improvement only if val_loss falls below 10% of the best,
    # so after warmup every epoch but the first is bad; patience 0 cuts the LR after each bad epoch.
    r = lrtrain("scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=0.9", "scheduler.factor=0.5",
                "warmup=linear", "warmup.length=2ep", "optimizer=sgd", "optimizer.lr=0.1",
                "trainer.max_epochs=5", *QUIET)
    assert r.returncode == 0, r.stderr
    lrs = replay(r.run_dir)
    assert all(recorded == expected for _, recorded, expected in lrs)
    per_epoch = [sorted({lr for step, lr, _ in lrs if step // SPE == e}) for e in range(5)]
    assert per_epoch[0][0] == 0.1 * 0.1 and per_epoch[1][-1] < 0.1  # the ramp
    # epoch 2 is the first after warmup (sets the best); epoch 3 is bad: epoch 4 runs at half the LR
    assert per_epoch[2] == per_epoch[3] == [0.1]
    assert per_epoch[4] == [0.05]
    ckpt = __import__("torch").load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["schedule"]["reductions"] == 2 and ckpt["schedule"]["num_bad_epochs"] == 0


def readme_schedule_example() -> str:
    """The Python block of the README's "Your own schedule" section: the example users copy is the one tested."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Your own schedule", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_custom_schedule_from_pythonpath(lrtrain, tmp_path):
    """The README's example class, written to a module on PYTHONPATH, drives a real run: steps.csv's lr is its
    formula (LambdaLR-style linear warmup, then cosine to 0), computed here independently."""
    code = readme_schedule_example()
    assert len(code.strip().splitlines()) <= 16
    (tmp_path / "my_schedules.py").write_text(code)
    r = lrtrain("scheduler=custom", "scheduler._target_=my_schedules.WarmupCosine", "+scheduler.warmup=20steps",
                "trainer.max_steps=90", "optimizer.lr=0.01", *QUIET, env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    lrs = [float(row["lr"]) for row in _rows(r.run_dir / "steps.csv")]
    expected = [0.01 * (k + 1) / 20 if k < 20 else 0.01 * (1 + math.cos(math.pi * (k - 20) / 70)) / 2
                for k in range(90)]
    assert len(lrs) == 90 and all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-18) for a, b in zip(lrs, expected))


def test_zero_restart_period_is_refused_before_the_run_starts(lrtrain):
    """T_0=0 used to spin forever at 100% CPU; 0.001ep rounds to zero steps just the same."""
    r = lrtrain("scheduler=cosine_restarts", "scheduler.T_0=0.001ep", timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == ("lrtrain: error: scheduler.T_0='0.001ep': must be a duration of at least one step "
                                "(it rounds to 0 steps at 45 steps per epoch, 900 in the run)")
    assert not (r.run_dir / "checkpoints").exists() and not (r.run_dir / "steps.csv").exists()
