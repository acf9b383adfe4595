"""The LR range test (Leslie Smith, "Cyclical Learning Rates for Training Neural Networks", 2017).

The LR rises exponentially from `min_lr` to `max_lr` over `num_steps` optimizer steps on training batches;
the loss is smoothed with a bias-corrected exponential moving average (`beta`) and the test stops early once
the smoothed loss exceeds `diverge_factor` times its best. The suggestion is the LR where the smoothed loss
falls fastest against log(LR) (the most negative slope), looked for before the smoothed loss reaches its
minimum: past the minimum the loss is already blowing up. The model, the optimizer and the RNG are restored
afterwards, so a real run that follows starts exactly as it would have without the test.

Each step is the training step itself (`Run.step_fn`, `lrtrain.step`): augmentation, the L1 penalty, clipping
and bf16 autocast apply as they will in the run, so the suggestion is measured on the step the run takes.

Unlike the training loop, this reads each loss back at once (one host sync per step): the stopping rule
needs it, and the test is a hundred steps long.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrtrain.errors import Interrupted
from lrtrain.loop import Run
from lrtrain.optimizers import train_mode
from lrtrain.signals import STOP
from lrtrain.writers import CSVLog, write_json_atomic


class LRFinder:
    def __init__(self, min_lr: float, max_lr: float, num_steps: int, beta: float, diverge_factor: float):
        self.min_lr, self.max_lr, self.num_steps = min_lr, max_lr, num_steps
        self.beta, self.diverge_factor = beta, diverge_factor

    def lr(self, i: int) -> float:
        return self.min_lr * (self.max_lr / self.min_lr) ** (i / (self.num_steps - 1))

    def run(self, run: Run, plots: bool) -> dict[str, Any]:
        """Run the test on `run`'s model and optimizer, write lr_find.csv/.json (and .png with `plots`), print
        the suggestion, restore the model and optimizer; return the result (`suggested_lr`, ...)."""
        model, opt, data = run.model, run.optimizer, run.data
        saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state()
        generator = torch.Generator(device=run.device).manual_seed(run.settings.seed)
        step = run.step_fn()
        lrs, losses, smoothed = [], [], []
        avg, best, stop_reason = 0.0, math.inf, None
        batches = iter(())
        model.train()
        train_mode(opt)  # schedule-free: steps are taken in train mode; the state saved above is restored after
        try:
            for i in range(self.num_steps):
                if STOP:  # SIGINT/SIGTERM: the range test is not resumable; end the run now
                    raise Interrupted(f"{STOP.name} during the LR range test (at its step {i})")
                stored, y = next(batches, (None, None))
                if stored is None:  # a new epoch of the same batch source the training uses
                    batches = data.train_batches(generator)
                    stored, y = next(batches)
                lr = self.lr(i)
                value = step(stored, y, [lr * g.get("lr_multiplier", 1.0) for g in opt.param_groups]).loss.item()
                avg = self.beta * avg + (1 - self.beta) * value
                smooth = avg / (1 - self.beta ** (i + 1))
                lrs.append(lr), losses.append(value), smoothed.append(smooth)
                if not math.isfinite(smooth):
                    stop_reason = "the loss became non-finite"
                    break
                best = min(best, smooth)
                if smooth > self.diverge_factor * best:
                    stop_reason = f"the smoothed loss exceeded {self.diverge_factor:g}x its best"
                    break
        finally:
            model.load_state_dict(saved[0])
            opt.load_state_dict(saved[1])
            torch.set_rng_state(saved[2])
        result = {"suggested_lr": suggest(lrs, smoothed), "min_lr": self.min_lr, "max_lr": self.max_lr,
                  "steps": len(lrs), "stop_reason": stop_reason or f"reached max_lr after {len(lrs)} steps"}
        out = run.out_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / "lr_find.csv").unlink(missing_ok=True)
        log = CSVLog(out / "lr_find.csv", ["step", "lr", "loss", "smoothed_loss"])
        log.write(zip(range(len(lrs)), lrs, losses, smoothed))
        log.close()
        write_json_atomic(result, out / "lr_find.json")
        if plots:
            plot_lr_find(out, result)
        print(f"lr_find: suggested lr {result['suggested_lr']:.3g} (tested {self.min_lr:g} to {lrs[-1]:.3g} "
              f"in {len(lrs)} steps; stopped: {result['stop_reason']}); {out / 'lr_find.csv'}", flush=True)
        return result


def suggest(lrs: list[float], smoothed: list[float]) -> float:
    """The LR of the steepest descent of the smoothed loss against log(LR), before the loss's minimum."""
    values = np.array([v if math.isfinite(v) else np.inf for v in smoothed])
    end = int(np.argmin(values)) + 1  # up to and including the minimum
    if end < 3:  # the loss rose from the start: the smallest LR tested is the only safe one
        return lrs[0]
    slopes = np.gradient(values[:end], np.log(lrs[:end]))
    return float(lrs[int(np.argmin(slopes))])


def use_lr(run: Run, lr: float) -> None:
    """Train with `lr` (the suggestion): every parameter group's base LR (times its μP multiplier, under
    model.parametrization=mup), and the config saved in checkpoints."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_multiplier", 1.0)
    run.config.setdefault("optimizer", {})["lr"] = lr


def plot_lr_find(out_dir: Path, result: dict[str, Any]) -> Path:
    """Write `lr_find.png`: loss against LR (log scale), the suggestion marked."""
    from lrtrain.plots import figure, read_csv

    rows = read_csv(out_dir / "lr_find.csv")
    fig = figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(rows["lr"], rows["loss"], lw=0.8, alpha=0.35, label="loss (per step)")
    ax.plot(rows["lr"], rows["smoothed_loss"], lw=1.8, label="smoothed loss")
    lr = result["suggested_lr"]
    at = rows["smoothed_loss"][rows["lr"].index(lr)] if lr in rows["lr"] else None
    ax.axvline(lr, color="tab:red", ls="--", lw=1)
    if at is not None:
        ax.plot([lr], [at], "o", color="tab:red", label=f"suggested lr {lr:.3g}")
    finite = [v for v in rows["smoothed_loss"] if math.isfinite(v)]
    lowest = min([v for v in rows["loss"] if math.isfinite(v)] + finite, default=None)
    if finite:  # the explosion at the end would hide the interesting part
        ax.set_ylim(lowest * 0.9, min(max(finite), 3 * finite[0]) * 1.05)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss",
           title=f"LR range test: suggested lr = {lr:.3g}")
    ax.legend()
    out = out_dir / "lr_find.png"
    fig.savefig(out, dpi=110)
    return out
