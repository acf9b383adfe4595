"""trainer.compile: the training forward pass through torch.compile, against the same run in eager mode."""

from __future__ import annotations

import pytest
import torch

from conftest import FAST, run_lrtrain


@pytest.mark.slow
def test_compiled_run_matches_eager_and_its_checkpoint_resumes_eager(tmp_path):
    eager = run_lrtrain(*FAST, cwd=tmp_path, run_dir=tmp_path / "eager")
    compiled = run_lrtrain(*FAST, "trainer.compile=true", cwd=tmp_path, run_dir=tmp_path / "compiled")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    a, b = eager.csv("steps.csv"), compiled.csv("steps.csv")
    assert len(a) == len(b) and [r["lr"] for r in a] == [r["lr"] for r in b]
    # inductor fuses the forward's ops (another summation order): float32 rounding, not another trajectory
    assert max(abs(float(x["loss"]) - float(y["loss"])) for x, y in zip(a, b)) < 1e-5
    assert compiled.summary()["status"] == "completed"
    # the checkpoint holds the plain module's weights (no torch.compile wrapper prefix): eager runs load it
    ckpt = torch.load(compiled.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert set(ckpt["model"]) == set(torch.load(eager.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"])
    resumed = run_lrtrain("trainer.max_epochs=3", "trainer.progress=none",
                          f"trainer.resume={compiled.run_dir / 'checkpoints' / 'last.pt'}", cwd=tmp_path,
                          run_dir=tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.summary()["status"] == "completed" and resumed.csv("metrics.csv")[-1]["epoch"] == "2"


@pytest.mark.slow
def test_a_compiler_that_fails_is_one_line_naming_the_option(tmp_path):
    r = run_lrtrain(*FAST, "trainer.compile=true", cwd=tmp_path, env={"CXX": str(tmp_path / "no-such-g++")})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrtrain: error: trainer.compile=True: must be false here: "
                                                   "torch.compile failed"), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert r.summary()["status"] == "failed"
