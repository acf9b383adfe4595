"""The training loop. It receives built objects (a `Run`), owns the step counter, and never reads a config.

`Trainer.steps` is one run's whole control flow, written once, as a generator: it yields what the next optimizer
step needs (`Want`) and is sent what the step gave (`StepResult`). `fit` drives one with `TrainStep`; a fused
sweep (lrtrain.sweep.fused) drives K in lock-step with its vectorized step. A `None` yielded is a pause: a driver of
several runs resumes the others first, so that no run's clock holds another's validation or outputs.

Per step it does only what a bare hand-written loop does, plus keeping the loss tensor and the LR float
(`lrtrain.pending`): no host sync, no per-sample Python. Losses are read back at flush points only: every
validation point (`trainer.val_every`), epoch end and `checkpoint_every_n_steps`. A flush writes the pending rows
of steps.csv, checks for divergence, and is followed by a checkpoint, so that what is on disk always describes
one consistent position (`lrtrain.position`), which resuming or rolling back restores, mid-epoch included.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable, Generator, Iterator, NamedTuple, Optional

import torch
from torch import nn

from lrtrain.averaging import train_inputs
from lrtrain.data import FolderData, TensorData, TextData
from lrtrain.optimizers import eval_mode, train_mode
from lrtrain.outputs import Outputs
from lrtrain.pending import Pending
from lrtrain.position import CheckpointDir, Position, restore
from lrtrain.run import Run
from lrtrain.signals import STOP
from lrtrain.step import StepResult, TrainStep
from lrtrain.summary import Status, Summary
from lrtrain.tasks import Task, task_for


class Want(NamedTuple):
    """What the next step needs: the batch the run's batch source gave, each parameter group's LR, and the
    momentum (or Adam's beta1) when a schedule cycles it."""

    batch: Any
    lrs: list[float]
    momentum: Optional[float]


Steps = Generator[Optional[Want], Optional[StepResult], Summary]


class Diverged(Exception):
    def __init__(self, step: int, reason: str):
        self.step, self.reason = step, reason
        super().__init__(reason)


@torch.no_grad()
def evaluate(model: nn.Module, split: Any, data: TensorData | FolderData | TextData, amp: Any,
             task: Optional[Task] = None,
             batches: Optional[int] = None) -> dict[str, float]:
    """Mean loss (and accuracy when classifying) over a split or its first `batches` batches, in eval mode."""
    model.eval()
    task = task or task_for(data.num_classes)
    return evaluate_outputs(lambda x: model(x).unsqueeze(0), split, data, amp, task, batches)[0]


@torch.no_grad()
def evaluate_outputs(forward: Callable[[torch.Tensor], torch.Tensor], split: Any,
                     data: TensorData | FolderData | TextData,
                     amp: Any, task: Task, batches: Optional[int] = None) -> list[dict[str, float]]:
    """The metrics of the R models whose outputs `forward(x)` gives stacked [R, B, ...]: each one's mean loss
    over every target of the split (or of its first `batches` batches), its accuracy when classifying, and the
    task's derived metrics. One host sync, at the end."""
    loss_sum: Any = 0
    correct: Any = 0
    n = 0
    for stored, y in itertools.islice(data.eval_batches(split), batches):
        with amp:
            out = forward(data.inputs(stored))
        n += y.numel()
        y = y.expand(out.shape[0], *y.shape)
        loss_sum = loss_sum + task.losses(out.float(), y).flatten(1).sum(1)
        if task.classify:
            correct = correct + task.hits(out, y).flatten(1).sum(1)
    hits = correct.tolist() if task.classify else []
    return [{"loss": loss / n, **({"acc": hits[r] / n} if task.classify else {}), **task.derive(loss / n)}
            for r, loss in enumerate(loss_sum.tolist())]


def evaluate_averaged(run: Run, cols: list[str], amp: Any) -> dict[str, float]:
    """The averaged weights' validation metrics `cols` (avg_val_*); NaN until the averaging has started."""
    if not run.averaging.started:
        return {k: math.nan for k in cols}
    model = run.averaging.evaluated(train_inputs(run.data))
    val = evaluate(model, run.data.val, run.data, amp, run.task, run.settings.val_batches)
    if run.dist:
        val = run.dist.from_main(val)  # rank 0's numbers, as for the raw weights
    return {k: val[k[len("avg_val_"):]] for k in cols}


class Trainer:
    """One run: its position, pending rows, validation points, decisions, checkpoints, summary and sinks."""

    def __init__(self, run: Run):
        self.run, self.settings, self.task, self.dist = run, run.settings, run.task, run.dist
        self.base_lrs = [group["lr"] for group in run.optimizer.param_groups]  # the configured LRs
        self.order = torch.Generator(device=run.device).manual_seed(run.settings.seed)
        self.pos = Position(order_state=self.order.get_state())
        self.checkpoints = CheckpointDir(run.out_dir / "checkpoints", run.settings.keep_last_k)
        self.cycles_momentum = run.schedule.momentum(0) is not None
        self.val_steps, self.val_epochs = run.val_steps, run.val_epochs
        self.stop_signal: Any = STOP  # true once a signal asked the run to stop
        self.step = run.loop_step()
        self.pending = Pending(run.hooks.clip is not None, run.settings.on_divergence == "rollback",
                               self.step.learns_lr, self.cycles_momentum)

    # What a fused replica (lrtrain.sweep.fused) does its own way: where its batches, weights and validation live.

    def batches(self, start: int) -> Iterator[Any]:
        """The epoch's batches from batch `start` on, in the order `self.order` draws."""
        shard = {"shard": (self.dist.rank, self.run.world_size)} if self.dist else {}
        return iter(self.run.data.train_batches(self.order, start=start, **shard))

    def validate(self) -> dict[str, float]:
        return evaluate(self.run.model, self.run.data.val, self.run.data, self.step.amp, self.task,
                        self.settings.val_batches)

    def sync(self) -> None:
        """Before run.model and run.optimizer are read (validation, checkpoints, the end): nothing to do here."""

    def restore(self, ckpt: dict[str, Any], keep_history: bool = False) -> None:
        """Back to a checkpoint; `keep_history` (a rollback) keeps the rows and rollbacks made since."""
        self.pos = restore(self.run, ckpt, since=self.pos if keep_history else None)

    def steps(self) -> Steps:
        """The run, from its start (or checkpoint) to its summary, which the generator returns."""
        self.begin()
        yield None  # a fused group stacks its replicas once every one is restored
        try:
            self.out.open()
            self.save()  # this run's own last.pt from its first step (a resume into a new dir too): to roll back to
            while self.running:
                try:
                    yield from self._epoch()
                except Diverged as d:
                    self.on_divergence(d)
            self.finish()
        except BaseException as e:
            self.out.fail(e, self.pos)
            raise
        self.out.totals(self.pos)
        try:
            yield None  # a group times every run that ended at this step before any writes its outputs
        finally:
            self.out.end()
        return self.out.summary

    def _epoch(self) -> Generator[Optional[Want], Optional[StepResult], None]:
        """Steps from pos.batch to the epoch's end, through its validation points; returns early when the run ends."""
        run, pos, total, spe = self.run, self.pos, self.run.timeline.total_steps, self.run.timeline.steps_per_epoch
        every_ckpt = self.settings.checkpoint_every_n_steps
        self.order.set_state(pos.order_state)
        batches = self.batches(pos.batch)
        yield from self._begin_stretch()
        for batch in batches:
            if self.dist is None and self.stop_signal:  # under ddp the ranks stop together, at a boundary
                self._end_stretch()
                self._interrupt()
                return
            lrs = [run.schedule(pos.step, base) for base in self.stretch_lrs]
            momentum = run.schedule.momentum(pos.step) if self.cycles_momentum else None
            result = yield Want(batch, lrs, momentum)
            self.pending.add(result, lrs[0], momentum)  # no host sync: read back at the next flush
            pos.step += 1
            pos.batch += 1
            if run.averaging is not None:
                run.averaging.after_step(pos.step, run.model)
            for sink in self.out.live:
                sink.on_step(pos.step, pos.epoch, lrs[0], result.loss)
            if pos.batch >= spe or (not self.val_epochs and pos.step % self.val_steps == 0) or pos.step >= total:
                yield None  # a group takes every replica's step before any validates
                if self._boundary():
                    return
                yield from self._begin_stretch()
            elif (every_ckpt and pos.step % every_ckpt == 0) or pos.step in run.save_at:
                self._flush()
                self.save(step_file=bool(every_ckpt and pos.step % every_ckpt == 0), mid_stretch=True)

    def _begin_stretch(self) -> Generator[None, Any, None]:
        """Before the steps up to the next boundary: train mode, the LRs' rollback scale, the clock."""
        yield None  # a group starts every replica's clock together
        run = self.run
        run.model.train()
        train_mode(run.optimizer)
        self.stretch_lrs = [base * self.pos.lr_scale for base in self.base_lrs]
        self.first_batch = self.pos.batch
        self.stretch_started = time.perf_counter()

    def _end_stretch(self) -> None:
        """Flush the stretch's steps, and count its time and samples."""
        self._flush()
        self.pos.add_stretch(time.perf_counter() - self.stretch_started, self.first_batch,
                             len(self.run.data.train), self.run.data.batch_size * self.run.world_size)

    def _boundary(self) -> bool:
        """After a step that ends an epoch, reaches a validation point or ends the run: flush; validate, decide
        and checkpoint when one is due. True when the epoch or the run ended."""
        run, pos, total = self.run, self.pos, self.run.timeline.total_steps
        self._end_stretch()
        epoch_ended = pos.batch >= run.timeline.steps_per_epoch
        if self.val_epochs:
            validating = (epoch_ended and (pos.epoch + 1) % self.val_epochs == 0) or pos.step >= total
        else:
            validating = pos.step % self.val_steps == 0 or pos.step >= total
        reason, best, report = self._validation() if validating else (None, False, None)
        if epoch_ended:
            pos.epoch, pos.batch, pos.order_state = pos.epoch + 1, 0, self.order.get_state()
        stop = self.dist.from_main(bool(self.stop_signal)) if self.dist else bool(self.stop_signal)
        if validating or stop or pos.step in run.save_at:
            self.save(best=best)
        if report is not None:
            reason = self._pruned(*report) or reason
        if stop and pos.step < total:
            self._interrupt(save=False)
        elif reason is not None:
            self.out.stop(*reason)
        return epoch_ended or not self.running

    def _validation(self) -> tuple[Optional[tuple[Status, str]], bool, tuple[int, dict]]:
        """Validate the weights as they are and hand the metrics row on; then what it decides: a reason to stop
        (a status and its reason), whether it is the best so far (for best.pt), and what a sweeper's pruner is
        told once the checkpoint is written (the validation's index and row)."""
        run, pos, settings = self.run, self.pos, self.settings
        self.sync()
        eval_mode(run.optimizer)  # schedule-free: validate (and then save) the averaged weights
        val = self.validate()  # every rank: the same validation batches
        if self.dist:
            val = self.dist.from_main(val)  # rank 0's numbers, so every rank takes the same decisions
        if run.stopper.guard.check_finite and not math.isfinite(val["loss"]):
            raise Diverged(pos.step, f"the validation loss became {val['loss']}")
        row = self.out.metrics_row(pos, pos.take_train_metrics(self.task.targets_per_sample), val)
        if run.averaging is not None:
            row.update(evaluate_averaged(run, self.out.averaged, self.step.amp))
        row["seconds"] = time.perf_counter() - self.stretch_started
        self.out.row(row)
        pos.metrics_rows += 1
        run.schedule.observe(pos.epoch, row)
        reason = run.stopper.update(pos.epoch, row, run.model)
        # the trial's step: this validation's index, counted in epochs when validating at epoch ends (a resume
        # of a ddp run by one process has epoch ends between multiples of val_steps)
        index = pos.epoch // self.val_epochs if self.val_epochs else (pos.step - 1) // self.val_steps
        if self.dist:
            reason = self.dist.from_main(reason)
        best = pos.track_best(row[settings.monitor], settings.monitor_mode)
        return (Status.EARLY_STOPPED, reason) if reason else None, best, (index, row)

    def _pruned(self, index: int, row: dict) -> Optional[tuple[Status, str]]:
        """After a validation and its checkpoint (a Ray Tune trial reports that last.pt): whether the sweeper's
        pruner or scheduler stops the run, and as what (pruned; a PBT trial paused to exploit: interrupted)."""
        run = self.run
        pruned = run.pruning.update(index, row) if run.pruning else None
        if self.dist:
            pruned = self.dist.from_main(pruned)
        return (getattr(run.pruning, "stop_status", Status.PRUNED), pruned) if pruned else None

    def _flush(self) -> None:
        """Read back the pending steps (one host sync), hand their rows to the sinks, check for divergence."""
        if not self.pending:
            return
        pos, run = self.pos, self.run
        read = self.pending.flush(pos.step - len(self.pending), pos.epoch, run.stopper.guard,
                                  self.settings.log_every_n_steps, len(pos.rollbacks), self.dist)
        self.out.steps(read.rows)
        pos.add_flushed(read, len(run.data.train), run.data.batch_size * run.world_size)
        if read.diverged is not None:
            raise Diverged(*read.diverged)

    def on_divergence(self, d: Diverged) -> None:
        """Stop (keeping the last good checkpoint), or roll back to it with a smaller LR."""
        pos, settings = self.pos, self.settings
        self.pending.clear()
        if settings.on_divergence == "rollback" and len(pos.rollbacks) < settings.max_rollbacks:
            if self.dist:
                self.dist.barrier()
            self.restore(self.checkpoints.last(), keep_history=True)
            pos = self.pos
            pos.rolled_back(d.step, d.reason, settings.rollback_factor)
            self.out.message(f"rollback {len(pos.rollbacks)}/{settings.max_rollbacks}: {d.reason} at step "
                             f"{d.step}; back to step {pos.step} with the LR x{pos.lr_scale:g}")
            return
        tail = f" (after {len(pos.rollbacks)} rollbacks)" if pos.rollbacks else ""
        self.out.stop(Status.DIVERGED, f"{d.reason} at step {d.step}{tail}")

    def _interrupt(self, save: bool = True) -> None:
        """A signal asked the run to stop: checkpoint where it is (unless just done) and end as `interrupted`."""
        if save:
            self.save()
        self.out.stop(Status.INTERRUPTED, f"{STOP.name} at step {self.pos.step}")

    def save(self, best: bool = False, step_file: bool = False, mid_stretch: bool = False) -> None:
        """Checkpoint where the run is: last.pt, with best.pt (`best`), step-<n>.pt (`step_file`) and, at a step
        of trainer.save_at, step_<n>.pt beside it."""
        self.sync()
        eval_mode(self.run.optimizer)  # every rank: a checkpoint holds the weights a resume evaluates
        if self.run.main:
            self.checkpoints.save(self.run, self.pos, best, step_file)
        if mid_stretch:  # training goes on
            train_mode(self.run.optimizer)

    @property
    def running(self) -> bool:
        return self.pos.step < self.run.timeline.total_steps and self.out.summary.status == Status.RUNNING

    def begin(self) -> None:
        """Restore a checkpoint to resume from; the outputs' columns and the summary."""
        run = self.run
        if run.resume is not None:
            self.restore(run.resume)
            if not run.resumed_in_place:  # continuing into a new run dir: its CSVs start at the checkpoint
                self.pos.steps_rows = self.pos.metrics_rows = 0
        if run.pbt is not None:  # PBT's values for this trial (after a restore: the donor's are in the optimizer)
            self.base_lrs = run.pbt.apply(run.optimizer)
            if run.pbt.rows is not None:  # an exploit: this job's rows up to the donor's step, then the donor's
                self.pos.steps_rows, self.pos.metrics_rows = run.pbt.rows
        if run.main:
            self.checkpoints.prepare()
        self.out = Outputs(run, self.pos, self.pending.columns)

    def finish(self) -> None:
        """The run ended (or was interrupted): its final weights, tested when it ended (lrtrain.outputs)."""
        self.sync()
        eval_mode(self.run.optimizer)  # the final weights, tested and kept, are the evaluation ones
        run = self.run
        self.out.finish(run, lambda: evaluate(run.model, run.data.test, run.data, self.step.amp, self.task))


def fit(run: Run) -> Summary:
    """Train `run`: validate every `trainer.val_every`, test at the end; return the summary."""
    trainer = Trainer(run)
    return drive(trainer.steps(), trainer.step)


def drive(steps: Steps, step: TrainStep) -> Summary:
    """Run one trainer's steps with `step`; an error in a step ends the run with it, as one inside would."""
    want = next(steps)
    while True:
        try:
            result = None if want is None else step(*want.batch, want.lrs, want.momentum)
        except BaseException as e:
            steps.throw(e)
            raise
        try:
            want = steps.send(result)
        except StopIteration as end:
            return end.value
