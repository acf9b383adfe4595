"""Where a run is (`Position`), and the checkpoint that holds it with everything a resume needs to continue bit for
bit: the model, optimizer, schedule and early-stopping state, and every random number generator."""

from __future__ import annotations

import platform
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

import lrtrain
from lrtrain.checkpoints import load, remove_temporaries, save_copies
from lrtrain.early_stopping import improved

if TYPE_CHECKING:
    from lrtrain.pending import Flushed
    from lrtrain.run import Run


@dataclass
class Position:
    """Where the run is; saved in every checkpoint as plain values."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the current epoch (0-based)
    batch: int = 0  # batches of the current epoch done
    order_state: Optional[torch.Tensor] = None  # data-order RNG state this epoch's permutation is drawn from
    loss_sum: float = 0.0  # since the last validation: sum of loss x batch size, samples, correct predictions
    seen: int = 0
    correct: int = 0
    last_lr: float = 0.0
    best_value: Optional[float] = None  # of trainer.monitor, for best.pt
    best_epoch: Optional[int] = None
    lr_scale: float = 1.0  # product of the rollback factors applied so far
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    steps_rows: int = 0  # data rows written to steps.csv / metrics.csv
    metrics_rows: int = 0
    samples: int = 0
    step_seconds: float = 0.0
    last_effective_lr: Optional[float] = None  # Prodigy, D-Adaptation: the learned step size

    def add_stretch(self, seconds: float, first_batch: int, n: int, batch_size: int) -> None:
        """The time and samples of the steps since batch `first_batch` of the epoch (of `n` samples)."""
        self.step_seconds += seconds
        self.samples += min(n, self.batch * batch_size) - min(n, first_batch * batch_size)

    def add_losses(self, losses: list[float], correct: int, n: int, batch_size: int) -> None:
        """The flushed steps (the last `len(losses)` batches of the epoch, of `n` samples) into the running
        train loss and accuracy, each weighted by its batch's size (an epoch's last batch may be short)."""
        start = self.batch - len(losses)
        for j, loss in enumerate(losses):
            size = min(batch_size, n - (start + j) * batch_size)
            self.loss_sum += loss * size
            self.seen += size
        self.correct += correct

    def add_flushed(self, read: Flushed, n: int, batch_size: int) -> None:
        """Steps read back (the last of the epoch's batches, of `n` samples): their rows counted, and unless
        one diverged, their losses and correct predictions into the running train metrics."""
        self.steps_rows += len(read.rows)
        if read.effective_lr is not None:
            self.last_effective_lr = read.effective_lr
        if read.diverged is None:
            self.add_losses(read.losses, read.correct, n, batch_size)
            self.last_lr = read.last_lr

    def take_train_metrics(self, targets_per_sample: int) -> dict[str, float]:
        """The training loss and accuracy (over targets: a language model's tokens) since the last validation;
        the sums start again."""
        train = {"loss": self.loss_sum / self.seen, "acc": self.correct / (self.seen * targets_per_sample)}
        self.loss_sum, self.seen, self.correct = 0.0, 0, 0
        return train

    def track_best(self, value: float, mode: str) -> bool:
        """Whether `value` of trainer.monitor is the best so far (for best.pt); it is kept if so."""
        best = improved(value, self.best_value, mode)
        if best:
            self.best_value, self.best_epoch = value, self.epoch
        return best

    def rolled_back(self, diverged_at: int, reason: str, factor: float) -> None:
        """Back at this checkpoint after a divergence at step `diverged_at`, to go on with the LR x `factor`."""
        self.lr_scale *= factor
        self.rollbacks.append({"diverged_at_step": diverged_at, "reason": reason, "restored_step": self.step,
                               "lr_scale": self.lr_scale})


# What a rollback keeps of the position it leaves: the rows written and the rollbacks made since the checkpoint.
HISTORY = ("steps_rows", "metrics_rows", "rollbacks", "lr_scale")


def snapshot(run: Run, pos: Position) -> dict[str, Any]:
    """A checkpoint: a plain dict of tensors and primitives, which loads with torch.load(weights_only=True)."""
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "early_stopping": run.stopper.state_dict(),
        "step": pos.step,
        "epoch": pos.epoch,
        "position": asdict(pos),
        "rng": rng_state(),
        "config": run.config,
        "versions": versions(),
        # a language model's token ids decode with its vocabulary (None: bytes)
        **({"vocabulary": run.data.vocabulary} if run.data.kind == "text" else {}),
        **({"averaged": run.averaging.state_dict()} if run.averaging is not None else {}),
    }


def restore(run: Run, ckpt: dict[str, Any], since: Optional[Position] = None) -> Position:
    """Put model, optimizer, schedule, stopper and RNGs back as the checkpoint has them; return its position,
    with the history (rows written, rollbacks made) of the position `since` (a rollback) when given."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["schedule"])
    run.stopper.load_state_dict(ckpt["early_stopping"])
    if run.averaging is not None and "averaged" in ckpt:  # else (a checkpoint without) it starts afresh
        run.averaging.load_state_dict(ckpt["averaged"])
    set_rng_state(ckpt["rng"])
    pos = Position(**ckpt["position"])
    if since is not None:
        vars(pos).update({k: getattr(since, k) for k in HISTORY})
    return pos


class CheckpointDir:
    """A run's checkpoints/: last.pt, best.pt, the `keep` newest step-<n>.pt, and the step_<n>.pt of
    trainer.save_at, which are never deleted (forks start from them)."""

    def __init__(self, path: Path, keep: int):
        self.path, self.keep = path, keep

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.path)  # what a killed write left

    def write(self, ckpt: dict[str, Any], best: bool = False, step_file: bool = False, kept: bool = False) -> None:
        """last.pt, and the same checkpoint as best.pt (`best`), step-<n>.pt (`step_file`), step_<n>.pt (`kept`)."""
        paths = [self.path / "last.pt"] + [self.path / "best.pt"] * best
        paths += [self.path / f"step-{ckpt['step']:08d}.pt"] * (step_file and self.keep > 0)
        paths += [self.path / kept_name(ckpt["step"])] * kept
        save_copies(ckpt, paths)
        if step_file:
            for old in sorted(self.path.glob("step-*.pt"))[:-self.keep or None]:
                old.unlink()

    def save(self, run: Run, pos: Position, best: bool = False, step_file: bool = False) -> None:
        """The run's checkpoint at `pos` (`write`), kept for good at a step of trainer.save_at."""
        self.write(snapshot(run, pos), best, step_file, kept=pos.step in run.save_at)

    def last(self) -> dict[str, Any]:
        return load(self.path / "last.pt")


def kept_name(step: int) -> str:
    """The file name of the checkpoint trainer.save_at keeps at `step`."""
    return f"step_{step}.pt"


def kept_steps(folder: Path) -> list[int]:
    """The steps at which `folder` (a run's checkpoints/) holds a kept checkpoint, in order."""
    return sorted(int(p.stem[5:]) for p in folder.glob("step_*.pt") if p.stem[5:].isdigit())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion, which weights_only loading does not accept
    return {"lrtrain": lrtrain.__version__, "torch": str(torch.__version__), "python": platform.python_version()}


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
