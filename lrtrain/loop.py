"""The training loop. It receives built objects (a `Run`), owns the step counter, and never reads a config.

Per step it does only what a bare hand-written loop does, plus appending the loss tensor and the LR float to
lists: no host sync, no per-sample Python. Losses are read back at flush points only: every epoch end and
every `checkpoint_every_n_steps`. A flush writes the pending rows of steps.csv, checks for divergence, and is
followed by a checkpoint, so that what is on disk always describes one consistent position.

Where the run is (`Position`) is plain data saved in every checkpoint; resuming or rolling back restores it
and the loop carries on from there, mid-epoch included, drawing the same data order and random numbers.
"""

from __future__ import annotations

import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lrtrain
from lrtrain.checkpoints import load, remove_temporaries, save_atomic, save_copies
from lrtrain.data import FolderData, TensorData, TextData
from lrtrain.distributed import Dist, weights_hash
from lrtrain.durations import Timeline
from lrtrain.config import TrainerConfig
from lrtrain.early_stopping import EarlyStopping, improved
from lrtrain.loggers import RunContext, Sink
from lrtrain.optimizers import eval_mode, train_mode
from lrtrain.pruning import TrialPruning
from lrtrain.regularization import StepHooks
from lrtrain.schedules import Schedule
from lrtrain.signals import STOP
from lrtrain.step import StepResult, TrainStep
from lrtrain.summary import Summary
from lrtrain.warmup import Warmup


@dataclass
class Run:
    """Everything `fit` needs: the objects `lrtrain.build` made from the config, and the trainer's settings."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule | Warmup  # lr(step, base_lr), observe(epoch, metrics), state_dict()
    data: TensorData | FolderData | TextData  # a batch source: train_batches(generator, start), eval_batches(split)
    loss_fn: nn.Module
    hooks: StepHooks  # what regularization adds to the step
    stopper: EarlyStopping  # early stopping and the divergence guard
    sinks: list[Sink]  # outputs; empty on ranks > 0
    settings: TrainerConfig  # trainer.*, validated
    device: torch.device
    timeline: Timeline
    out_dir: Path
    config: dict[str, Any]  # the resolved config, saved in every checkpoint
    resume: Optional[dict[str, Any]] = None  # a loaded checkpoint to continue from
    resumed_in_place: bool = False  # the checkpoint is this run dir's own: its CSVs continue from it
    dist: Optional[Dist] = None  # trainer.strategy=ddp: this process's rank among the job's processes
    lr_find: Optional[dict[str, Any]] = None  # the LR range test's result, when one ran before training
    sweep_dir: Optional[Path] = None  # when the run is a job of a sweep: the sweep's dir and the job's number
    job_num: Optional[int] = None
    pruning: Optional[TrialPruning] = None  # a job of a pruned Optuna study: update(epoch, row) -> reason to stop

    def step_fn(self, model: Optional[nn.Module] = None) -> TrainStep:
        """The training step over `model` (default: the run's model; the loop passes its ddp wrapper)."""
        return TrainStep(model or self.model, self.optimizer, self.loss_fn, self.data, self.hooks,
                         self.settings.precision, self.device, compile=self.settings.compile)


@dataclass
class Position:
    """Where the run is; saved in every checkpoint as plain values."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the current epoch (0-based)
    batch: int = 0  # batches of the current epoch done
    order_state: Optional[torch.Tensor] = None  # data-order RNG state this epoch's permutation is drawn from
    loss_sum: float = 0.0  # this epoch so far: sum of loss x batch size, samples, correct predictions
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, split: Any, data: TensorData | FolderData | TextData, amp: Any) -> dict[str, float]:
    """Mean loss (and accuracy when classifying) per target over a whole split, in eval mode. A language
    model predicts every token of a window: its logits [batch, time, vocabulary] are flattened to one row per
    target, so the loss is in nats per token."""
    model.eval()
    loss_sum: Any = 0.0
    correct: Any = 0
    n = 0
    for stored, y in data.eval_batches(split):
        with amp:
            out = model(data.inputs(stored))
        if data.num_classes is None:
            loss_sum = loss_sum + F.mse_loss(out.float().squeeze(-1), y, reduction="sum")
        else:
            loss_sum = loss_sum + F.cross_entropy(out.float().flatten(0, -2), y.flatten(), reduction="sum")
            correct = correct + (out.argmax(-1) == y).sum()
        n += y.numel()
    result = {"loss": float(loss_sum) / n}
    if data.num_classes is not None:
        result["acc"] = int(correct) / n
    return result


def language_metrics(val_loss: float) -> dict[str, float]:
    """A language model's validation loss (nats per token) as bits per character (or byte) and perplexity."""
    return {"val_bpc": val_loss / math.log(2), "val_ppl": math.exp(val_loss) if val_loss < 700 else math.inf}


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


class Diverged(Exception):
    def __init__(self, step: int, reason: str):
        self.step, self.reason = step, reason
        super().__init__(reason)


class Trainer:
    def __init__(self, run: Run):
        self.run, self.settings = run, run.settings
        self.classify = run.data.num_classes is not None
        self.language = run.data.kind == "text"  # val_bpc, val_ppl; accuracy per token
        self.base_lrs = [group["lr"] for group in run.optimizer.param_groups]  # the configured LRs
        self.order = torch.Generator(device=run.device).manual_seed(run.settings.seed)
        self.pos = Position(order_state=self.order.get_state())
        self.ckpt_dir = run.out_dir / "checkpoints"
        self._pending_losses: list[torch.Tensor] = []
        self._pending_lrs: list[float] = []
        self._pending_correct: list[torch.Tensor] = []
        self._pending_norms: list[torch.Tensor] = []  # gradient norms before clipping, with grad_clip
        self._pending_effective: list[float] = []  # learned step sizes, with Prodigy and D-Adaptation
        self._pending_momenta: list[float] = []  # with a schedule that cycles momentum
        self.cycles_momentum = run.schedule.momentum(0) is not None
        self.dist = run.dist
        self.main = run.dist is None or run.dist.main  # rank 0 alone writes checkpoints
        self.world = run.dist.world_size if run.dist else 1
        self.shard = (run.dist.rank, self.world) if run.dist else (0, 1)
        self.sinks = run.sinks
        self.live = [s for s in run.sinks if s.live]
        # checkpoints hold run.model, the unwrapped model: they load with and without ddp
        self.train_model = (nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device] if run.device.type == "cuda" else None) if run.dist else run.model)
        self.step = run.step_fn(self.train_model)
        self.logs_effective_lr = self.step.learns_lr

    # ------------------------------------------------------------------------------------------ state

    def checkpoint(self) -> dict[str, Any]:
        """A plain dict of tensors and primitives: loads with torch.load(weights_only=True)."""
        run = self.run
        return {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "schedule": run.schedule.state_dict(),
            "early_stopping": run.stopper.state_dict(),
            "step": self.pos.step,
            "epoch": self.pos.epoch,
            "position": asdict(self.pos),
            "rng": rng_state(),
            "config": run.config,
            "versions": versions(),
            # a language model's token ids decode with its vocabulary (None: bytes)
            **({"vocabulary": run.data.vocabulary} if self.language else {}),
        }

    def restore(self, ckpt: dict[str, Any], keep_history: bool = False) -> None:
        """Put model, optimizer, schedule, stopper, position and RNGs back as the checkpoint has them.

        `keep_history` (a rollback): keep the rows written and the rollbacks made since, not the checkpoint's.
        """
        run = self.run
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.schedule.load_state_dict(ckpt["schedule"])
        run.stopper.load_state_dict(ckpt["early_stopping"])
        kept = {k: getattr(self.pos, k) for k in ("steps_rows", "metrics_rows", "rollbacks", "lr_scale")}
        self.pos = Position(**ckpt["position"])
        if keep_history:
            vars(self.pos).update(kept)
        set_rng_state(ckpt["rng"])

    def save(self, best: bool) -> None:
        self._sync()
        eval_mode(self.run.optimizer)  # every rank: a checkpoint holds the weights a resume evaluates
        if not self.main:
            return
        ckpt = self.checkpoint()
        last = self.ckpt_dir / "last.pt"
        if best:
            save_copies(ckpt, [last, self.ckpt_dir / "best.pt"])
        else:
            save_atomic(ckpt, last)

    def save_step_checkpoint(self) -> None:
        self._sync()
        eval_mode(self.run.optimizer)  # a mid-epoch checkpoint holds the weights a resume evaluates
        if self.main:
            keep = self.settings.keep_last_k
            step_file = self.ckpt_dir / f"step-{self.pos.step:08d}.pt"
            save_copies(self.checkpoint(), [self.ckpt_dir / "last.pt"] + ([step_file] if keep else []))
            for old in sorted(self.ckpt_dir.glob("step-*.pt"))[:-keep or None]:
                old.unlink()
        train_mode(self.run.optimizer)

    # ------------------------------------------------------------------------------------------- loop

    def fit(self) -> Summary:
        """Train, validate every epoch, test at the end; hand every row to the sinks; return the summary."""
        self.begin()
        try:
            self.open()
            while self.running:
                try:
                    self._epoch(self.run.timeline.total_steps)
                except Diverged as d:
                    self.on_divergence(d)
            self.finish()
        except BaseException as e:
            self.fail(e)
            raise
        finally:
            self.close()
        return self.summary

    # The pieces of fit(), which a fused sweep (lrtrain.fused) calls for each of its replicas in turn.

    def begin(self) -> None:
        """Restore a checkpoint to resume from; the columns, the sinks' context and the summary."""
        run, settings, out = self.run, self.settings, self.run.out_dir
        if run.resume is not None:
            self.restore(run.resume)
            if not run.resumed_in_place:  # continuing into a new run dir: its CSVs start at the checkpoint
                self.pos.steps_rows = self.pos.metrics_rows = 0
        self.metric_cols = ["epoch", "step", "lr", "train_loss", "val_loss",
                            *(["train_acc", "val_acc"] if self.classify else []),
                            *(["val_bpc", "val_ppl"] if self.language else []), "seconds"]
        self.step_cols = (["step", "epoch", "lr", "loss"] + (["grad_norm"] if run.hooks.clip else [])
                          + (["rollbacks"] if settings.on_divergence == "rollback" else [])
                          + (["effective_lr"] if self.logs_effective_lr else [])
                          + (["momentum"] if self.cycles_momentum else []))
        if self.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            remove_temporaries(self.ckpt_dir)  # what a killed write left
        self.ctx = RunContext(out, self.step_cols, self.metric_cols, run.config, self.pos.steps_rows,
                              self.pos.metrics_rows, run.resumed_in_place, run.sweep_dir, run.job_num)
        summary = self.summary = Summary(
            status="running", run_dir=str(out), monitor=settings.monitor, mode=settings.monitor_mode, epochs=0,
            steps=0, train_seconds=0.0, samples_per_second=0.0, device=str(run.device),
            threads=torch.get_num_threads(), seed=settings.seed,
            resumed_from_step=self.pos.step if run.resume is not None else None, lr_find=run.lr_find,
            versions=versions())
        if self.dist:
            summary.world_size, summary.global_batch_size = self.world, run.data.batch_size * self.world
        self.started = time.perf_counter()
        self.seconds_before = self.pos.step_seconds

    def open(self) -> None:
        for sink in self.sinks:
            sink.on_start(self.ctx)
        self.started = time.perf_counter()  # train_seconds: the loop, not the loggers' start-up (TensorBoard's import)
        # this run's own last.pt from its first step (a resume into a new dir too): to resume or roll back to
        self.save(best=False)

    @property
    def running(self) -> bool:
        return self.pos.step < self.run.timeline.total_steps and self.summary.status == "running"

    def finish(self) -> None:
        """The run ended (or was interrupted): the final weights, tested when it ended."""
        run, summary = self.run, self.summary
        if summary.status == "running":
            summary.status = "completed"
        self._sync()
        eval_mode(run.optimizer)  # the final weights, tested and kept, are the evaluation ones
        stopper = run.stopper
        ended = summary.status != "interrupted"  # an interrupted run is continued, not finished, by a resume
        if ended and stopper.restore_best_weights and stopper.best_weights is not None:
            run.model.load_state_dict(stopper.best_weights)
            summary.restored_best_weights_from_epoch = stopper.best_epoch
        if ended and run.data.test is not None and summary.status != "diverged":
            test = evaluate(run.model, run.data.test, run.data, self.step.amp)
            summary.test = {f"test_{k}": v for k, v in test.items()}
        if self.dist:  # the weights every rank ends with: identical unless the ranks fell out of step
            hashes = self.dist.gather(weights_hash(run.model.state_dict()))
            summary.rank_weight_hashes, summary.ranks_in_sync = hashes, len(set(hashes)) == 1

    def fail(self, e: BaseException) -> None:
        self.summary.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        self.summary.stop_reason = f"{type(e).__name__}: {e}".splitlines()[0]

    def close(self) -> None:
        """The summary's totals, then every sink gets it and is closed."""
        self.totals()
        self.end_sinks(self.summary)

    def totals(self) -> None:
        """The summary's totals: where the run is and how long it trained (its outputs not counted)."""
        pos, summary = self.pos, self.summary
        summary.best_value, summary.best_epoch = pos.best_value, pos.best_epoch
        summary.steps, summary.epochs = pos.step, pos.epoch + (pos.batch > 0)
        summary.rollbacks = pos.rollbacks
        summary.train_seconds = time.perf_counter() - self.started + self.seconds_before
        summary.samples_per_second = pos.samples / pos.step_seconds if pos.step_seconds else 0.0
        summary.effective_lr = pos.last_effective_lr

    def _validate(self) -> dict[str, float]:
        """The validation metrics of the weights as they are now (a fused group validates its replicas at once)."""
        return evaluate(self.run.model, self.run.data.val, self.run.data, self.step.amp)

    def _sync(self) -> None:
        """Before run.model and run.optimizer are read (validation, checkpoints, the end): a no-op here; a fused
        replica copies its slice of the stacked tensors into them (lrtrain.fused)."""

    def end_sinks(self, summary: Summary) -> None:
        """Every sink gets the summary and is closed, even when another one fails; the first error is raised."""
        error: Optional[BaseException] = None
        for sink in self.sinks:
            try:
                sink.on_end(summary)
            except Exception as e:
                error = error or e
            finally:
                sink.close()
        if error is not None and summary.status not in ("failed", "interrupted"):
            raise error

    def _epoch(self, total_steps: int) -> None:
        run, pos, data, step = self.run, self.pos, self.run.data, self.step
        schedule, cycles = run.schedule, self.cycles_momentum
        self.begin_epoch()
        shard = {"shard": self.shard} if self.dist else {}
        stop_each_step = self.dist is None  # under ddp the ranks stop together, at the epoch's end
        stopped = False
        for stored, y in data.train_batches(self.order, start=pos.batch, **shard):  # order: from self.order
            if pos.step >= total_steps:
                break
            if STOP and stop_each_step:
                stopped = True
                break
            momentum = schedule.momentum(pos.step) if cycles else None
            result = step(stored, y, self.step_lrs(), momentum)
            self.record(result, run.optimizer.param_groups[0]["lr"], momentum)
        self.end_epoch(stopped)

    def begin_epoch(self) -> None:
        """Before an epoch's first step (or the first step after a resume or rollback mid-epoch)."""
        run, pos = self.run, self.pos
        self.epoch_started = time.perf_counter()
        self.order.set_state(pos.order_state)
        run.model.train()
        train_mode(run.optimizer)
        self.epoch_base_lrs = [base * pos.lr_scale for base in self.base_lrs]
        self.first_batch = pos.batch

    def step_lrs(self) -> list[float]:
        """Each parameter group's LR for the next step."""
        schedule, step = self.run.schedule, self.pos.step
        return [schedule(step, base) for base in self.epoch_base_lrs]

    def record(self, result: StepResult, lr: float, momentum: Optional[float]) -> None:
        """One step was taken: keep its numbers for the next flush; checkpoint when one is due mid-epoch."""
        pos = self.pos
        self._pending_losses.append(result.loss)
        self._pending_lrs.append(lr)
        if result.correct is not None:
            self._pending_correct.append(result.correct)
        if result.grad_norm is not None:
            self._pending_norms.append(result.grad_norm)
        if result.effective_lr is not None:
            self._pending_effective.append(result.effective_lr)
        if momentum is not None:
            self._pending_momenta.append(momentum)
        pos.step += 1
        pos.batch += 1
        for sink in self.live:
            sink.on_step(pos.step, pos.epoch, lr, result.loss)
        every_ckpt = self.settings.checkpoint_every_n_steps
        if (every_ckpt and pos.step % every_ckpt == 0 and pos.batch < self.run.timeline.steps_per_epoch
                and pos.step < self.run.timeline.total_steps):
            self._flush()
            self.save_step_checkpoint()

    def end_epoch(self, stopped: bool) -> None:
        """After an epoch's last step, or when a signal stopped it (`stopped`): flush, then validate or checkpoint."""
        pos = self.pos
        self._flush()
        pos.step_seconds += time.perf_counter() - self.epoch_started
        n, bs = len(self.run.data.train), self.run.data.batch_size * self.world
        pos.samples += min(n, pos.batch * bs) - min(n, self.first_batch * bs)
        if stopped:
            self._interrupt()
        else:
            self._end_epoch(self.epoch_started)

    def _interrupt(self) -> None:
        """A signal asked the run to stop mid-epoch: checkpoint where it is and end as `interrupted`."""
        self.save(best=False)
        self._mark_interrupted()

    def _mark_interrupted(self) -> None:
        self.summary.status, self.summary.stop_reason = "interrupted", f"{STOP.name} at step {self.pos.step}"

    def _flush(self) -> None:
        """Read back the pending steps (one host sync), hand their rows to the sinks, check for divergence."""
        if not self._pending_losses:
            return
        pos, run, settings = self.pos, self.run, self.settings
        losses_t, correct_t, norms_t = self._pending_tensors()
        if self.dist:  # every rank gets the same values, so every rank decides on divergence the same way
            losses_t, correct_t = self.dist.mean(losses_t), self.dist.sum(correct_t)
        losses = losses_t.tolist()
        lrs, effective, momenta = self._pending_lrs, self._pending_effective, self._pending_momenta
        correct = int(correct_t)
        norms = [[v] for v in norms_t.tolist()] if norms_t is not None else None
        self._clear_pending()
        first = pos.step - len(losses)
        diverged = run.stopper.guard.check(losses)
        count = len(losses) if diverged is None else diverged[0] + 1  # keep the offending step's row
        every = settings.log_every_n_steps
        extra = [len(pos.rollbacks)] if settings.on_divergence == "rollback" else []
        rows = [[first + j, pos.epoch, lrs[j], losses[j], *(norms[j] if norms else ()), *extra,
                 *effective[j:j + 1], *momenta[j:j + 1]]
                for j in range(count) if (first + j) % every == 0]
        for sink in self.sinks:
            sink.on_steps(rows)
        pos.steps_rows += len(rows)
        if effective:
            pos.last_effective_lr = effective[count - 1]
        if diverged is not None:
            raise Diverged(first + diverged[0], diverged[1])
        n, bs = len(run.data.train), run.data.batch_size * self.world
        start_batch = pos.batch - len(losses)
        for j, loss in enumerate(losses):
            size = min(bs, n - (start_batch + j) * bs)
            pos.loss_sum += loss * size
            pos.seen += size
        pos.correct += correct
        pos.last_lr = lrs[-1]

    def _pending_tensors(self) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The pending steps' losses and gradient norms (one per step), and their correct predictions (a sum)."""
        losses = torch.stack(self._pending_losses).float()
        correct = torch.stack(self._pending_correct).sum() if self._pending_correct else torch.zeros(())
        norms = torch.stack(self._pending_norms).float() if self._pending_norms else None
        return losses, correct, norms

    def _clear_pending(self) -> None:
        self._pending_losses, self._pending_lrs, self._pending_correct, self._pending_norms = [], [], [], []
        self._pending_effective, self._pending_momenta = [], []

    def _end_epoch(self, started: float) -> None:
        run, pos, settings = self.run, self.pos, self.settings
        self._sync()
        eval_mode(run.optimizer)  # schedule-free: validate (and then save) the averaged weights
        val = self._validate()  # every rank: the full validation set
        if self.dist:
            val = self.dist.from_main(val)  # rank 0's numbers, so every rank takes the same decisions
        if run.stopper.guard.check_finite and not math.isfinite(val["loss"]):
            raise Diverged(pos.step, f"the validation loss became {val['loss']}")
        row: dict[str, Any] = {"epoch": pos.epoch, "step": pos.step, "lr": pos.last_lr,
                               "train_loss": pos.loss_sum / pos.seen, "val_loss": val["loss"]}
        if self.classify:
            # a language model's correct predictions are tokens, block_size of them per window
            row["train_acc"] = pos.correct / (pos.seen * (run.data.block_size if self.language else 1))
            row["val_acc"] = val["acc"]
        if self.language:
            row.update(language_metrics(val["loss"]))
        row["seconds"] = time.perf_counter() - started
        for sink in self.sinks:
            sink.on_epoch(row)
        pos.metrics_rows += 1
        self.summary.final = row

        run.schedule.observe(pos.epoch, row)
        reason = run.stopper.update(pos.epoch, row, run.model)
        pruned = run.pruning.update(pos.epoch, row) if run.pruning else None
        if self.dist:
            reason, pruned = self.dist.from_main((reason, pruned))
        best = improved(row[settings.monitor], pos.best_value, settings.monitor_mode)
        if best:
            pos.best_value, pos.best_epoch = row[settings.monitor], pos.epoch
        pos.epoch, pos.batch = pos.epoch + 1, 0
        pos.order_state = self.order.get_state()
        pos.loss_sum, pos.seen, pos.correct = 0.0, 0, 0
        self.save(best=best)
        stop = self.dist.from_main(bool(STOP)) if self.dist else bool(STOP)
        if stop and pos.step < run.timeline.total_steps:
            self._mark_interrupted()
        elif pruned:
            self.summary.status, self.summary.stop_reason = "pruned", pruned
        elif reason:
            self.summary.status, self.summary.stop_reason = "early_stopped", reason

    def on_divergence(self, d: Diverged) -> None:
        """Stop (keeping the last good checkpoint), or roll back to it with a smaller LR."""
        pos, settings = self.pos, self.settings
        self._clear_pending()
        if settings.on_divergence == "rollback" and len(pos.rollbacks) < settings.max_rollbacks:
            if self.dist:
                self.dist.barrier()
            ckpt = load(self.ckpt_dir / "last.pt")
            self.restore(ckpt, keep_history=True)
            self.pos.lr_scale *= settings.rollback_factor
            event = {"diverged_at_step": d.step, "reason": d.reason, "restored_step": self.pos.step,
                     "lr_scale": self.pos.lr_scale}
            self.pos.rollbacks.append(event)
            for sink in self.sinks:
                sink.on_message(f"rollback {len(self.pos.rollbacks)}/{settings.max_rollbacks}: {d.reason} at step "
                                f"{d.step}; back to step {self.pos.step} with the LR x{self.pos.lr_scale:g}")
            return
        tail = f" (after {len(pos.rollbacks)} rollbacks)" if pos.rollbacks else ""
        self.summary.status, self.summary.stop_reason = "diverged", f"{d.reason} at step {d.step}{tail}"


def fit(run: Run) -> Summary:
    return Trainer(run).fit()
