"""End to end: real `lrtrain` processes, every output of the contract read back from disk."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FAST


def test_default_run_writes_the_outputs_contract(lrtrain):
    r = lrtrain(*FAST)
    assert r.returncode == 0, r.stderr
    out = r.run_dir
    assert (out / ".hydra" / "config.yaml").is_file() and (out / ".hydra" / "overrides.yaml").is_file()

    steps = r.csv("steps.csv")
    metrics = r.csv("metrics.csv")
    summary = r.summary()
    per_epoch = math.ceil(round(1797 * 0.8) / 32)
    assert list(steps[0]) == ["step", "epoch", "lr", "loss"]
    assert [int(s["step"]) for s in steps] == list(range(2 * per_epoch))
    assert {int(s["epoch"]) for s in steps} == {0, 1}
    assert list(metrics[0]) == ["epoch", "step", "lr", "train_loss", "val_loss", "train_acc", "val_acc", "seconds"]
    assert [int(m["epoch"]) for m in metrics] == [0, 1]
    assert int(metrics[-1]["step"]) == 2 * per_epoch
    assert float(metrics[1]["val_loss"]) < float(metrics[0]["val_loss"])

    assert summary["status"] == "completed" and summary["stop_reason"] is None
    assert summary["epochs"] == 2 and summary["steps"] == 2 * per_epoch
    assert summary["monitor"] == "val_loss" and summary["best_epoch"] in (0, 1)
    assert summary["best_value"] == min(float(m["val_loss"]) for m in metrics)
    assert summary["final"]["val_acc"] == float(metrics[-1]["val_acc"])
    assert summary["train_seconds"] > 0 and summary["samples_per_second"] > 0
    assert summary["device"] == "cpu"
    assert summary["versions"]["torch"] == torch.__version__ and summary["versions"]["lrtrain"]

    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(out / "checkpoints" / name, weights_only=True)
        assert ckpt["step"] == 2 * per_epoch if name == "last.pt" else ckpt["step"] > 0
        assert set(ckpt["model"]) >= {"1.weight", "1.bias"}
        assert ckpt["config"]["optimizer"]["_target_"] == "torch.optim.Adam"
    assert not list((out / "checkpoints").glob("*.tmp"))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss_step", "train/lr", "val_loss", "val_acc"} <= set(tags)
    assert len(events.Scalars("train/loss_step")) == len(steps)
    tb_acc = [e.value for e in events.Scalars("val_acc")]  # TensorBoard stores float32
    assert tb_acc == [float(torch.tensor(float(m["val_acc"]), dtype=torch.float32)) for m in metrics]
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "lrtrain · completed" in r.stdout


def test_recorded_lr_is_the_lr_the_optimizer_used(lrtrain):
    """steps.csv's lr for step k equals the schedule's value at k, which is what the optimizer stepped with."""
    r = lrtrain(*FAST, "scheduler=cosine", "warmup=linear", "warmup.length=10steps", "optimizer=sgd",
                "optimizer.lr=0.1")
    assert r.returncode == 0, r.stderr
    steps = r.csv("steps.csv")
    total = len(steps)
    for row in steps:
        k = int(row["step"])
        expected = (0.1 * (0.1 + 0.9 * k / 10) if k < 10
                    else 0.1 * (1 + math.cos(math.pi * (k - 10) / (total - 10))) / 2)
        assert float(row["lr"]) == expected or math.isclose(float(row["lr"]), expected, rel_tol=1e-12)
    assert float(steps[0]["lr"]) > 0


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(lrtrain, tmp_path):
    def metrics(seed: int, name: str) -> list[tuple]:
        r = lrtrain(*FAST, "trainer.max_epochs=1", f"trainer.seed={seed}", run_dir=tmp_path / name)
        assert r.returncode == 0, r.stderr
        return [tuple(v for k, v in row.items() if k != "seconds") for row in r.csv("metrics.csv")]

    first = metrics(1, "a")
    assert first == metrics(1, "b")
    assert first != metrics(2, "c")


def test_max_steps_sets_the_run_length(lrtrain):
    r = lrtrain("trainer.max_steps=50", "trainer.progress=none", "logger.csv.plots=false")
    assert r.returncode == 0, r.stderr
    assert len(r.csv("steps.csv")) == 50 and r.summary()["steps"] == 50
    assert [int(m["step"]) for m in r.csv("metrics.csv")] == [45, 50]


@pytest.mark.slow
def test_multirun_sweep_gives_one_run_per_value(lrtrain, tmp_path):
    r = lrtrain("-m", "scheduler=step", "scheduler.gamma=0.8,0.9,0.95", "trainer.max_epochs=1",
                "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false",
                "hydra.sweep.dir=" + str(tmp_path / "sweep"))
    assert r.returncode == 0, r.stderr
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1", "2"]
    for job, gamma in zip(jobs, ("0.8", "0.9", "0.95")):
        assert f"scheduler.gamma={gamma}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert (job / "metrics.csv").is_file() and (job / "summary.json").is_file()


def test_help_lists_groups_and_options(lrtrain):
    r = lrtrain("--help")
    assert r.returncode == 0, r.stderr
    for group in ("optimizer", "scheduler", "warmup", "regularization", "early_stopping", "dataset", "model",
                  "trainer"):
        assert f"{group}: " in r.stdout
    from conftest import group_options

    for group in ("optimizer", "scheduler", "dataset"):
        assert f"{group}: {', '.join(group_options(group))}" in r.stdout
    groups = r.stdout.split("Composed config")[0]
    assert "AdamConfig" not in groups and "TrainerConfig" not in groups  # schemas are not options
    # lrtrain-bench's suites and submissions are listed as its own, not as groups of lrtrain
    assert "\nbench/suite: mini, standard\n" in groups and "bench/* are lrtrain-bench's" in groups
    assert "\nsuite:" not in groups and "\nsubmission:" not in groups


def test_cfg_job_prints_the_composed_config(lrtrain):
    r = lrtrain("--cfg", "job", "optimizer=sgd", "optimizer.lr=0.05")
    assert r.returncode == 0, r.stderr
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(r.stdout)
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.05
    assert cfg.dataset._target_ == "lrtrain.data.digits"


def test_console_script_and_module_are_the_same_program(lrtrain):
    a = lrtrain("--cfg", "job", "scheduler=cosine")
    b = lrtrain("--cfg", "job", "scheduler=cosine", module=False)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


@pytest.mark.parametrize("name", ["run", "my run", "it's, [1]"])
def test_the_resume_hint_pastes_back_as_the_run_dir(tmp_path, name):
    """The shell gives Hydra one override, and Hydra's grammar gives back the path (a comma would make a sweep)."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lrtrain.cli import resume_command

    words = shlex.split(resume_command(tmp_path / name))
    assert words[0] == "lrtrain" and len(words) == 2
    override = OverridesParser.create().parse_override(words[1])
    assert (override.key_or_group, override.value()) == ("trainer.resume", str(tmp_path / name))
