"""Divergence: stop with the last good checkpoint and exit 3, or roll back with a smaller LR."""

from __future__ import annotations

import torch

# SGD at lr 20 blows the digits loss up to ~188 at step 1.
HOT = ["optimizer=sgd", "optimizer.lr=20", "early_stopping.divergence_threshold=10", "trainer.max_epochs=2",
       "trainer.progress=none", "logger.csv.plots=false"]


def test_stop_keeps_the_last_good_checkpoint_and_exits_3(lrtrain):
    r = lrtrain(*HOT)
    assert r.returncode == 3
    assert r.stderr.startswith("lrtrain: diverged: the training loss 188.") and "last.pt" in r.stderr
    summary = r.summary()
    assert summary["status"] == "diverged" and "at step 1" in summary["stop_reason"]
    last = torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 0  # the state before the bad step, not after
    steps = r.csv("steps.csv")
    assert [s["step"] for s in steps] == ["0", "1"] and float(steps[1]["loss"]) > 10  # the bad step is shown
    assert not (r.run_dir / "metrics.csv").read_text().strip().count("\n")


def test_rollback_restores_and_cuts_the_lr(lrtrain):
    r = lrtrain(*HOT, "trainer.on_divergence=rollback", "trainer.rollback_factor=0.01")
    assert r.returncode == 0, r.stderr
    summary = r.summary()
    assert summary["status"] == "completed"
    assert summary["rollbacks"] == [{"diverged_at_step": 1, "reason": summary["rollbacks"][0]["reason"],
                                     "restored_step": 0, "lr_scale": 0.01}]
    steps = r.csv("steps.csv")
    assert [(s["step"], s["rollbacks"]) for s in steps[:3]] == [("0", "0"), ("1", "0"), ("0", "1")]
    assert float(steps[2]["lr"]) == 20 * 0.01 and float(steps[2]["loss"]) == float(steps[0]["loss"])
    assert summary["final"]["val_acc"] > 0.9


def test_rollbacks_are_bounded(lrtrain):
    r = lrtrain(*HOT, "trainer.on_divergence=rollback", "trainer.rollback_factor=0.9", "trainer.max_rollbacks=2")
    assert r.returncode == 3
    summary = r.summary()
    assert summary["status"] == "diverged" and len(summary["rollbacks"]) == 2
    assert summary["stop_reason"].endswith("(after 2 rollbacks)")
