"""trainer.strategy=ddp: two CPU processes under torchrun (gloo) train one run, in step, into one run dir."""

from __future__ import annotations

import pytest

import os
import re
import signal
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import Result, lrtrain_env

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lrtrain",
            "trainer.strategy=ddp", "trainer.num_threads=1", "trainer.progress=plain", "logger=[csv]",
            "logger.csv.plots=false"]


def torchrun(*overrides: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(TORCHRUN + list(overrides), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=lrtrain_env({"TMPDIR": str(cwd)}), start_new_session=True)


def test_train_batches_shards_are_disjoint_and_cover_the_epoch():
    from lrtrain.data import Split, TensorData

    n, bs = 23, 4
    data = TensorData(name="t", kind="tabular", train=Split(torch.arange(n), torch.arange(n)), val=None, test=None,
                      num_classes=2, mean=torch.zeros(1), std=torch.ones(1), batch_size=bs,
                      eval_batch_size=bs)
    shards = [[y for _, y in data.train_batches(torch.Generator().manual_seed(0), shard=(r, 2))] for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == -(-n // (2 * bs))  # the same number of steps on every rank
    seen = [set(torch.cat(s).tolist()) for s in shards]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))
    resumed = [y for _, y in data.train_batches(torch.Generator().manual_seed(0), start=1, shard=(1, 2))]
    assert all(torch.equal(a, b) for a, b in zip(resumed, shards[1][1:]))


@pytest.mark.slow
def test_two_ranks_train_one_run_in_step_and_resume_without_ddp(tmp_path, lrtrain):
    proc = torchrun("trainer.max_epochs=3", cwd=tmp_path)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    run_dirs = [p.parent for p in (tmp_path / "outputs").rglob(".hydra")]
    assert len(run_dirs) == 1, run_dirs  # rank 1 wrote no run dir of its own
    assert not list(tmp_path.glob("lrtrain-rank*"))  # and removed its scratch dir
    run = Result(0, out, "", run_dirs[0])
    rows = run.csv("metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(r[k] for r in rows for k in rows[0])
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[0] > losses[1] > losses[2]
    steps = run.csv("steps.csv")
    assert len(steps) == int(rows[-1]["step"]) == 3 * -(-1437 // 64)  # digits: 1437 training samples, 2 x 32
    summary = run.summary()
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["global_batch_size"] == 64
    hashes = summary["rank_weight_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] and summary["ranks_in_sync"]
    from lrtrain.checkpoints import load
    from lrtrain.distributed import weights_hash

    assert weights_hash(load(run.run_dir / "checkpoints" / "last.pt")["model"]) == hashes[0]
    # the checkpoint holds the unwrapped model: a single process continues the run, counting optimizer steps
    # (one epoch of one process's 32-sample batches is 45 steps)
    more = lrtrain(f"trainer.resume={run.run_dir / 'checkpoints' / 'last.pt'}", "trainer.max_steps=114",
                   "logger.csv.plots=false", run_dir=tmp_path / "single")
    assert more.returncode == 0, more.stderr
    assert [(r["epoch"], r["step"]) for r in more.csv("metrics.csv")] == [("3", "114")]
    assert more.summary()["resumed_from_step"] == 69


@pytest.mark.slow
def test_an_explicit_run_dir_shared_by_the_ranks_survives(tmp_path):
    """With hydra.run.dir every rank's Hydra dir is the run dir itself: no rank may remove it as scratch."""
    run_dir = tmp_path / "shared"
    proc = torchrun("trainer.max_steps=10", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 10


def _descendants(pid: int) -> dict[int, str]:
    """{pid: environ} of the processes under `pid`."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = {}, {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier}
        for p in frontier:
            try:
                found[p] = (Path("/proc") / str(p) / "environ").read_bytes().decode(errors="replace")
            except OSError:
                found[p] = ""
    return found


@pytest.mark.slow
def test_a_lost_rank_ends_the_job_with_a_message(tmp_path):
    proc = torchrun("trainer.max_epochs=500", cwd=tmp_path)
    try:
        deadline, victim = time.monotonic() + 120, None
        while victim is None and time.monotonic() < deadline:  # wait for training: rank 0's steps.csv
            if proc.poll() is not None:
                break
            if list((tmp_path / "outputs").rglob("metrics.csv")):
                victim = next((p for p, env in _descendants(proc.pid).items() if "\0RANK=1\0" in f"\0{env}"), None)
            time.sleep(0.2)
        assert victim is not None, "rank 1 was not found training"
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)  # ends instead of hanging
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    # torchrun's report names the lost rank and why: as the root cause, or, when rank 0's own error (the lost
    # peer) is stamped in the same second, among its failures (torchrun breaks the tie by rank)
    report = out.split("Failures:", 1)[-1]
    assert re.search(r"rank\s*:\s*1\b[^\n]*\n\s*exitcode\s*:\s*-9\b[^\n]*SIGKILL", report), out[-3000:]
    assert not _descendants(proc.pid)
    assert [p.name for p in tmp_path.glob("lrtrain-rank*")] == [f"lrtrain-rank1-{victim}"]  # where rank 1 ran


def test_ddp_outside_torchrun_is_a_one_line_error(lrtrain):
    result = lrtrain("trainer.strategy=ddp", "trainer.max_epochs=1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lrtrain: error: trainer.strategy='ddp': must be single outside torchrun (start the job with `torchrun "
        "--nproc_per_node=N -m lrtrain trainer.strategy=ddp ...`; RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
        "MASTER_PORT not set)"]
