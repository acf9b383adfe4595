"""What a run hands out: its rows and messages to the sinks, and its summary, from its start to its end."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import torch

from lrtrain.averaging import averaged_metrics
from lrtrain.loggers import RunContext, end_sinks
from lrtrain.position import Position, versions
from lrtrain.summary import Status, Summary

if TYPE_CHECKING:
    from lrtrain.run import Run


class Outputs:
    """The sinks (`live` ones get every step) and the summary of `run`, which is at `pos` (its start or the
    checkpoint it resumes from)."""

    def __init__(self, run: Run, pos: Position, step_cols: list[str]):
        self.sinks, self.live = run.sinks, [s for s in run.sinks if s.live]
        settings, world = run.settings, run.world_size
        self.row_metrics = run.task.row_metrics()  # train_* and val_* of metrics.csv
        self.averaged = averaged_metrics(self.row_metrics) if run.averaging is not None else []  # avg_val_*
        metric_cols = ["epoch", "step", "lr", *self.row_metrics, *self.averaged, "seconds"]
        self.ctx = RunContext(run.out_dir, step_cols, metric_cols, run.config, pos.steps_rows, pos.metrics_rows,
                              run.resumed_in_place, run.sweep_dir, run.job_num)
        self.summary = Summary(
            status=Status.RUNNING, run_dir=str(run.out_dir), monitor=settings.monitor, mode=settings.monitor_mode,
            epochs=0, steps=0, train_seconds=0.0, samples_per_second=0.0, device=str(run.device),
            threads=torch.get_num_threads(), seed=settings.seed,
            resumed_from_step=pos.step if run.resume is not None else None, lr_find=run.lr_find,
            fork=run.fork, pbt=run.pbt.record() if run.pbt is not None else None, versions=versions())
        if run.dist:
            self.summary.world_size, self.summary.global_batch_size = world, run.data.batch_size * world
        self.started = time.perf_counter()
        self.seconds_before = pos.step_seconds

    def open(self) -> None:
        for sink in self.sinks:
            sink.on_start(self.ctx)
        self.started = time.perf_counter()  # train_seconds: the loop, not the loggers' start-up (TensorBoard's import)

    def steps(self, rows: list[list[Any]]) -> None:
        for sink in self.sinks:
            sink.on_steps(rows)

    def metrics_row(self, pos: Position, train: dict[str, float], val: dict[str, float]) -> dict[str, Any]:
        """A validation point's row of metrics.csv, from the training and validation metrics (without the
        averaged weights' and the seconds, which the loop adds)."""
        row: dict[str, Any] = {"epoch": pos.epoch, "step": pos.step, "lr": pos.last_lr}
        row.update({k: (train if k.startswith("train_") else val)[k.split("_", 1)[1]] for k in self.row_metrics})
        return row

    def row(self, row: dict[str, Any]) -> None:
        """A validation point's metrics."""
        for sink in self.sinks:
            sink.on_epoch(row)
        self.summary.final = row

    def message(self, text: str) -> None:
        for sink in self.sinks:
            sink.on_message(text)

    def stop(self, status: Status, reason: str) -> None:
        self.summary.status, self.summary.stop_reason = status, reason

    def fail(self, e: BaseException, pos: Position) -> None:
        """The run ended with an error (or a second signal): its summary says so, and the sinks get it."""
        self.stop(Status.INTERRUPTED if isinstance(e, KeyboardInterrupt) else Status.FAILED,
                  f"{type(e).__name__}: {e}".splitlines()[0])
        self.totals(pos)
        self.end()

    def finish(self, run: Run, test: Callable[[], dict[str, float]]) -> None:
        """The run ended (or a signal interrupted it): a run still running completed; one that ended (not
        interrupted: a resume continues that one) gets its best weights back when early stopping kept them, and
        its `test` metrics unless it diverged; under ddp, each rank's final weights are compared."""
        summary, stopper = self.summary, run.stopper
        if summary.status == Status.RUNNING:
            summary.status = Status.COMPLETED
        ended = summary.status != Status.INTERRUPTED
        if ended and stopper.restore_best_weights and stopper.best_weights is not None:
            run.model.load_state_dict(stopper.best_weights)
            summary.restored_best_weights_from_epoch = stopper.best_epoch
        if ended and run.data.test is not None and summary.status != Status.DIVERGED:
            summary.test = {f"test_{k}": v for k, v in test().items()}
        if run.dist:  # the weights every rank ends with: identical unless the ranks fell out of step
            from lrtrain.distributed import weights_hash

            hashes = run.dist.gather(weights_hash(run.model.state_dict()))
            summary.rank_weight_hashes, summary.ranks_in_sync = hashes, len(set(hashes)) == 1

    def totals(self, pos: Position) -> None:
        """Where the run is and how long it trained (its outputs not counted)."""
        summary = self.summary
        summary.best_value, summary.best_epoch = pos.best_value, pos.best_epoch
        summary.steps, summary.epochs = pos.step, pos.epoch + (pos.batch > 0)
        summary.rollbacks = pos.rollbacks
        summary.train_seconds = time.perf_counter() - self.started + self.seconds_before
        summary.samples_per_second = pos.samples / pos.step_seconds if pos.step_seconds else 0.0
        summary.effective_lr = pos.last_effective_lr

    def end(self) -> None:
        """Every sink gets the summary and is closed (lrtrain.loggers.end_sinks)."""
        end_sinks(self.sinks, self.summary)
