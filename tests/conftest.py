"""Shared fixtures: run real `lrtrain` processes into tmp_path; compose the real config in-process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Small and quick: two epochs of the digits default, no live bar.
FAST = ["trainer.max_epochs=2", "trainer.progress=plain"]
# scheduler=custom needs a Schedule class: lrtrain's own cosine is one (tests that sweep every option use it).
CUSTOM = ["scheduler._target_=lrtrain.schedules.Cosine", "+scheduler.eta_min=0.0"]
# In-process runs: no progress, plots or TensorBoard, on the CPU.
QUIET = ["trainer.progress=none", "logger=[csv]", "logger.csv.plots=false", "trainer.device=cpu"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path

    def csv(self, name: str) -> list[dict[str, str]]:
        with open(self.run_dir / name, newline="") as f:
            return list(csv.DictReader(f))

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())


def lrtrain_env(extra: dict | None = None) -> dict:
    """The environment every lrtrain process of the tests gets."""
    # One torch thread per process: pytest runs two workers on two cores, and oversubscribed threads make tiny
    # models many times slower. (It also keeps results bit-comparable: the thread count changes reductions.)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_lrtrain(*overrides: str, cwd: Path, run_dir: Path | None = None, module: bool = True,
                timeout: float = 300, env: dict | None = None) -> Result:
    """Run `python -m lrtrain` (or the `lrtrain` console script) as a user would, into `run_dir`."""
    run_dir = run_dir or cwd / "run"
    cmd = [sys.executable, "-m", "lrtrain"] if module else [str(Path(sys.executable).with_name("lrtrain"))]
    args = list(overrides)
    # trainer.resume=<run dir> chooses the run dir itself (continuing in place)
    if not any(a.startswith(("-m", "--multirun", "--help", "--cfg", "hydra.run.dir")) or
               (a.startswith("trainer.resume=") and Path(a.split("=", 1)[1]).is_dir()) for a in args):
        args.append(f"hydra.run.dir={run_dir}")
    proc = subprocess.run(cmd + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=lrtrain_env(env))
    return Result(proc.returncode, proc.stdout, proc.stderr, run_dir)


def finished_run(tmp_path_factory, name: str, *overrides: str) -> Path:
    """A run of `overrides` that completed, in a folder of its own: for module fixtures that several tests read."""
    r = run_lrtrain(*overrides, cwd=tmp_path_factory.mktemp(name))
    assert r.returncode == 0, r.stderr
    return r.run_dir


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """In-process tests too: two pytest workers share two cores."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def lrtrain(tmp_path):
    """lrtrain(*overrides) -> Result, run in tmp_path."""

    def _run(*overrides: str, **kwargs) -> Result:
        return run_lrtrain(*overrides, cwd=tmp_path, **kwargs)

    return _run


@pytest.fixture
def compose():
    """compose(*overrides) -> the real composed config (validated), without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lrtrain.config import register, validate

    register()

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        validate(cfg)
        return cfg

    return _compose


def config_error(compose, *overrides: str) -> str:
    """The one-line message of the ConfigValueError that composing these overrides raises."""
    from lrtrain.errors import ConfigValueError

    with pytest.raises(ConfigValueError) as e:
        compose(*overrides)
    return str(e.value)


def group_options(group: str) -> list[str]:
    """Every option of a config group, from the files on disk (so new options are tested automatically)."""
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture
def train_briefly(compose, tmp_path):
    """train_briefly(*overrides, steps=40) -> (run, per-step losses): build and fit in-process into tmp_path."""
    from lrtrain.build import build
    from lrtrain.loop import fit

    def _train(*overrides: str, steps: int = 40):
        cfg = compose(*overrides, f"trainer.max_steps={steps}", *QUIET)
        run = build(cfg, tmp_path)
        fit(run)
        return run, read_rows(tmp_path / "steps.csv")

    return _train


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def loss_fell(rows: list[dict[str, str]], k: int = 5) -> bool:
    """The mean loss of the last k steps is well below that of the first k."""
    losses = [float(r["loss"]) for r in rows]
    return sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k


class Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing in the loop handles it."""


def fit_killed_after(run, steps: int, monkeypatch) -> None:
    """Train `run` in this process and end it as a kill would, as its step `steps + 1` begins (what its last
    checkpoint holds is the test's to check)."""
    from lrtrain.loop import fit
    from lrtrain.step import TrainStep

    step, done = TrainStep.__call__, []

    def killing(self, *args):
        if len(done) == steps:
            raise Killed
        done.append(1)
        return step(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(TrainStep, "__call__", killing)
        with pytest.raises(Killed):
            fit(run)
