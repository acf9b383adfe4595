"""Cooldown forks: trainer.save_at keeps checkpoints; a fork continues a constant run from one of them and
decays the LR, giving exactly the rows of the scheduler=wsd run that decays from the same step."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import QUIET, config_error, read_rows, run_lrtrain

# A constant parent of 40 steps (90 steps an epoch: all mid-epoch), a linear warmup of 5, checkpoints kept at 10
# and 20; rolling checkpoints every 7 steps (keep_last_k=1) must not delete the kept ones.
PARENT = ["scheduler=constant", "warmup=linear", "warmup.length=5steps", "trainer.max_steps=40",
          "trainer.save_at=[10steps,50%]", "trainer.checkpoint_every_n_steps=7", "trainer.keep_last_k=1",
          "regularization=[dropout]", *QUIET]
SHAPES = ["linear", "cosine", "1-sqrt"]


def test_save_at_keeps_checkpoints_that_keep_last_k_never_deletes(train_briefly, tmp_path):
    train_briefly("trainer.save_at=[10steps,50%]", "trainer.checkpoint_every_n_steps=7",
                  "trainer.keep_last_k=1", steps=40)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("step*.pt")) == ["step-00000035.pt", "step_10.pt", "step_20.pt"]
    for step in (10, 20):
        ckpt = torch.load(folder / f"step_{step}.pt", weights_only=True)
        assert ckpt["step"] == step and ckpt["position"]["step"] == step


@pytest.mark.parametrize("overrides, message", [
    (["fork.from=somewhere"], "fork.at=None: must be where to fork"),
    (["fork.from=x", "fork.at=10steps", "fork.shape=sqrt"], "fork.shape='sqrt': must be one of linear, cosine, 1-sqrt"),
    (["fork.from=x", "fork.at=10steps", "fork.cooldown=0steps"], "fork.cooldown='0steps': must be a duration above 0"),
    (["fork.min_lr=-1"], "fork.min_lr=-1: must be a finite number >= 0"),
    (["trainer.save_at=[10steps,soon]"], "trainer.save_at=['10steps', 'soon']: must be a list of durations: 'soon'"),
])
def test_bad_fork_keys_are_one_line(compose, overrides, message):
    assert message in config_error(compose, *overrides)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("forks")
    r = run_lrtrain(*PARENT, cwd=cwd, run_dir=cwd / "const")
    assert r.returncode == 0, r.stderr
    return r.run_dir


def _files(run_dir):
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}


def _sweep_jobs(sweep_dir):
    jobs = {}
    for job in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
        summary = json.loads((job / "summary.json").read_text())
        jobs[summary["fork"]["shape"] if summary.get("fork") else
             _config_value(job, "scheduler.decay_type")] = (job, summary)
    return jobs


def _config_value(job, key):
    import yaml

    node = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.slow
def test_fork_rows_equal_the_wsd_run_decaying_from_the_same_step(parent, tmp_path):
    """A fork at S=20 with a cooldown of 10 steps, in each shape, against a fresh scheduler=wsd run of 30 steps
    whose decay of 10 steps starts at 20: steps 21..30 (the 0-based rows 20..29) agree in LR and loss, bit for bit."""
    before = _files(parent)
    forks = run_lrtrain("-m", f"fork.from={parent}", "fork.at=50%", "fork.cooldown=50%",
                        f"fork.shape={','.join(SHAPES)}", f"hydra.sweep.dir={tmp_path / 'forks'}", cwd=tmp_path)
    assert forks.returncode == 0, forks.stderr
    fresh = run_lrtrain("-m", *[a for a in PARENT if not a.startswith(("scheduler", "trainer.max_steps"))],
                        "scheduler=wsd", "trainer.max_steps=30", f"scheduler.decay_fraction={10 / 30!r}",
                        f"scheduler.decay_type={','.join(SHAPES)}", f"hydra.sweep.dir={tmp_path / 'wsd'}", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert _files(parent) == before  # the parent's dir is read, never written
    fork_jobs, wsd_jobs = _sweep_jobs(tmp_path / "forks"), _sweep_jobs(tmp_path / "wsd")
    for shape in SHAPES:
        (fork_dir, summary), (wsd_dir, _) = fork_jobs[shape], wsd_jobs[shape]
        assert summary["fork"]["parent"] == str(parent.resolve())
        assert (summary["fork"]["step"], summary["fork"]["cooldown"], summary["steps"]) == (20, 10, 30)
        rows = read_rows(fork_dir / "steps.csv")
        reference = read_rows(wsd_dir / "steps.csv")
        assert [r["step"] for r in rows] == [str(s) for s in range(20, 30)]  # its own steps only
        assert rows == reference[20:]  # LR and loss as written: the same digits
        lrs = [float(r["lr"]) for r in rows]
        assert lrs[0] == 1e-3 and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 2e-4
        assert (fork_dir / ".hydra" / "config.yaml").is_file() and not (fork_dir / "checkpoints" / "step_20.pt").exists()
        assert _config_value(fork_dir, "scheduler.decay_type") == shape
    with open(tmp_path / "forks" / "study_summary.csv", newline="") as f:
        study = list(csv.DictReader(f))
    assert {(r["fork_parents"], r["fork_step"], r["fork_cooldown"], r["fork_shape"]) for r in study} == {
        (str(parent.resolve()), "20", "10", s) for s in SHAPES}
    assert (tmp_path / "forks" / "cooldown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "wsd" / "cooldown.png").exists()  # a sweep without forks has none


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (["fork.at=15steps"], ("fork.at='15steps': must be a step of {parent} with a checkpoint (15 has none; it kept "
                           "checkpoints at steps 10, 20)")),
    (["fork.at=3steps"], "at or after the parent's warmup (5 steps)"),
    (["fork.at=10steps", "model=cnn"], "made with model._target_='lrtrain.models.MLP'"),
    (["fork.at=10steps", "trainer.seed=1"], "made with trainer.seed=0, this fork has trainer.seed=1"),
    (["fork.at=10steps", "scheduler=cosine"], "fork='scheduler=cosine': must be a fork's own keys"),
])
def test_a_fork_that_cannot_be_is_refused_in_one_line(parent, tmp_path, overrides, message):
    r = run_lrtrain(f"fork.from={parent}", *overrides, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    line = message.format(parent=parent)
    assert r.stderr.strip().splitlines() == [f"lrtrain: error: {r.stderr.split('error: ', 1)[1].strip()}"]
    assert line in r.stderr


@pytest.mark.slow
def test_forks_under_the_fused_launcher_are_forks_trained_alone(parent, tmp_path):
    r = run_lrtrain("-m", "hydra/launcher=fused", f"fork.from={parent}", "fork.at=10steps,20steps",
                    "fork.cooldown=4steps", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "solo: job 1 (fork.from: a fork's config is composed from its parent's" in r.stdout
    for job, step in ((0, 10), (1, 20)):
        summary = json.loads((tmp_path / "s" / str(job) / "summary.json").read_text())
        assert summary["fork"]["step"] == step and summary["steps"] == step + 4


@pytest.mark.slow
def test_a_fork_of_a_run_that_is_not_constant_names_what_exists(tmp_path):
    r = run_lrtrain("scheduler=cosine", "trainer.max_steps=12", "trainer.save_at=[6steps]", *QUIET, cwd=tmp_path,
                    run_dir=tmp_path / "cos")
    assert r.returncode == 0, r.stderr
    r = run_lrtrain(f"fork.from={tmp_path / 'cos'}", "fork.at=6steps", cwd=tmp_path, run_dir=tmp_path / "fork")
    assert r.returncode == 2
    assert "must be a scheduler=constant run (it ran Cosine; it kept checkpoints at steps 6)" in r.stderr
    assert not (tmp_path / "fork" / "summary.json").exists() or json.loads(
        (tmp_path / "fork" / "summary.json").read_text())["status"] == "failed"
