"""The training loop. It receives built objects (a `Run`), owns the step counter, and never reads a config.

Per step it does only what a bare hand-written loop does, plus appending the loss tensor and the LR float to
lists: no host sync, no per-sample Python. Losses are read back once per epoch, when the epoch's rows are
written.
"""

from __future__ import annotations

import contextlib
import math
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lrtrain
from lrtrain.checkpoints import save_atomic
from lrtrain.data import FolderData, TensorData
from lrtrain.durations import Timeline
from lrtrain.early_stopping import EarlyStopping, improved
from lrtrain.progress import ProgressDisplay
from lrtrain.schedules import Schedule
from lrtrain.warmup import Warmup
from lrtrain.writers import CSVLog, TensorBoard, write_json_atomic

@dataclass
class Run:
    """Everything `fit` needs, built from the config by `lrtrain.build`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule | Warmup  # lr(step, base_lr), observe(epoch, metrics), state_dict()
    data: TensorData | FolderData  # a batch source: train_batches(generator), eval_batches(split)
    loss_fn: nn.Module
    device: torch.device
    timeline: Timeline
    seed: int
    monitor: str
    mode: str
    out_dir: Path
    early_stopping: Optional[EarlyStopping] = None
    precision: str = "32"
    log_every_n_steps: int = 1
    progress: str = "auto"
    tensorboard: bool = True
    plots: bool = True
    config: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, split: Any, data: TensorData | FolderData, amp: Any) -> dict[str, float]:
    """Mean loss (and accuracy when classifying) over a whole split, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=data.mean.device)
    correct = torch.zeros((), device=data.mean.device, dtype=torch.long)
    for x, y in data.eval_batches(split):
        with amp:
            out = model(x)
        if data.num_classes is None:
            loss_sum += F.mse_loss(out.float().squeeze(-1), y, reduction="sum")
        else:
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
    n = len(split)
    result = {"loss": loss_sum.item() / n}
    if data.num_classes is not None:
        result["acc"] = correct.item() / n
    return result


def _versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion, which weights_only loading does not accept
    return {"lrtrain": lrtrain.__version__, "torch": str(torch.__version__), "python": platform.python_version()}


def fit(run: Run) -> dict[str, Any]:
    """Train, validate every epoch, test at the end; write the outputs contract; return the summary."""
    out, data, model, opt = run.out_dir, run.data, run.model, run.optimizer
    classify = data.num_classes is not None
    spe, total_steps = run.timeline.steps_per_epoch, run.timeline.total_steps
    epochs = math.ceil(total_steps / spe)
    base_lrs = [group["lr"] for group in opt.param_groups]
    amp = (torch.autocast(run.device.type, dtype=torch.bfloat16) if run.precision == "bf16"
           else contextlib.nullcontext())
    generator = torch.Generator(device=run.device).manual_seed(run.seed)
    acc_cols = ["train_acc", "val_acc"] if classify else []
    metric_cols = ["epoch", "step", "lr", "train_loss", "val_loss", *acc_cols, "seconds"]

    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    steps_log = CSVLog(out / "steps.csv", ["step", "epoch", "lr", "loss"])
    metrics_log = CSVLog(out / "metrics.csv", metric_cols)
    tb = TensorBoard(out / "tensorboard" if run.tensorboard else None)
    progress = ProgressDisplay(run.progress, total_steps, epochs)

    summary: dict[str, Any] = {
        "status": "running", "stop_reason": None, "monitor": run.monitor, "mode": run.mode,
        "best_epoch": None, "best_value": None, "final": None, "test": None, "epochs": 0, "steps": 0,
        "train_seconds": 0.0, "samples_per_second": 0.0, "device": str(run.device), "seed": run.seed,
        "run_dir": str(out), "versions": _versions(),
    }
    step, samples, step_seconds = 0, 0, 0.0
    n, bs = len(data.train), data.batch_size
    started = time.perf_counter()
    try:
        for epoch in range(epochs):
            epoch_start = time.perf_counter()
            model.train()
            losses: list[torch.Tensor] = []
            lrs: list[float] = []
            corrects: list[torch.Tensor] = []
            first = step
            for x, y in data.train_batches(generator):  # the order comes from `generator`
                if step >= total_steps:
                    break
                for group, base in zip(opt.param_groups, base_lrs):
                    group["lr"] = run.schedule(step, base)
                with amp:
                    output = model(x)
                    loss = run.loss_fn(output.squeeze(-1) if not classify else output, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
                lrs.append(opt.param_groups[0]["lr"])
                if classify:
                    corrects.append((output.argmax(1) == y).sum())
                step += 1
                progress.step(step, epoch, lrs[-1], loss, (samples + (step - first) * bs) / max(
                    step_seconds + time.perf_counter() - epoch_start, 1e-9))

            step_losses = torch.stack(losses).float().tolist()  # the epoch's one host sync
            seen = min(n, (step - first) * bs)
            samples += seen
            step_seconds += time.perf_counter() - epoch_start
            sizes = [min(bs, n - j * bs) for j in range(step - first)]
            train_loss = sum(l * s for l, s in zip(step_losses, sizes)) / seen

            every = run.log_every_n_steps
            steps_log.write((first + j, epoch, lrs[j], step_losses[j]) for j in range(step - first)
                            if (first + j) % every == 0)
            val = evaluate(model, data.val, data, amp)
            row: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lrs[-1], "train_loss": train_loss,
                                   "val_loss": val["loss"]}
            if classify:
                row["train_acc"] = torch.stack(corrects).sum().item() / seen
                row["val_acc"] = val["acc"]
            row["seconds"] = time.perf_counter() - epoch_start
            metrics_log.write([[row[c] for c in metric_cols]])
            progress.epoch_end(row)
            for j in range(0, step - first, every):
                tb.scalars({"train/loss_step": step_losses[j], "train/lr": lrs[j]}, first + j)
            tb.scalars({k if k.startswith(("train", "val")) else f"epoch/{k}": v for k, v in row.items()
                        if k not in ("epoch", "step")}, step)
            summary.update(epochs=epoch + 1, steps=step, final=row)

            if not all(math.isfinite(v) for v in step_losses) or not math.isfinite(val["loss"]):
                summary.update(status="diverged", stop_reason="the loss became non-finite (NaN or inf)")
                break
            run.schedule.observe(epoch, row)
            value = row[run.monitor]
            checkpoint = _checkpoint(run, step, epoch, generator)
            if improved(value, summary["best_value"], run.mode):
                summary.update(best_value=value, best_epoch=epoch)
                save_atomic(checkpoint, out / "checkpoints" / "best.pt")
            save_atomic(checkpoint, out / "checkpoints" / "last.pt")
            reason = run.early_stopping.update(row) if run.early_stopping is not None else None
            if reason:
                summary.update(status="early_stopped", stop_reason=reason)
                break
        if summary["status"] == "running":
            summary["status"] = "completed"
        if data.test is not None and summary["status"] != "diverged":
            test = evaluate(model, data.test, data, amp)
            summary["test"] = {f"test_{k}": v for k, v in test.items()}
    except BaseException as e:
        summary.update(status="failed", stop_reason=f"{type(e).__name__}: {e}".splitlines()[0])
        raise
    finally:
        progress.close()
        summary["train_seconds"] = time.perf_counter() - started
        summary["samples_per_second"] = samples / step_seconds if step_seconds else 0.0
        for log in (steps_log, metrics_log):
            log.close()
        tb.close()
        write_json_atomic(summary, out / "summary.json")
    if run.plots and summary["epochs"]:
        from lrtrain.report import plot_curves

        plot_curves(out)
    return summary


def _checkpoint(run: Run, step: int, epoch: int, generator: torch.Generator) -> dict[str, Any]:
    """A plain dict of tensors and primitives: loads with torch.load(weights_only=True)."""
    np_state = np.random.get_state()
    rng = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
           "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
           "torch": torch.get_rng_state(), "data_order": generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "early_stopping": run.early_stopping.state_dict() if run.early_stopping is not None else {},
        "step": step,
        "epoch": epoch,
        "rng": rng,
        "config": run.config,
        "versions": _versions(),
    }
