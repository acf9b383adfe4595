"""Sinks: everything that consumes a run's progress. The loop hands each of them the same rows.

A sink sees the run start (`on_start`), the step rows at each flush point (`on_steps`: one host sync per flush,
never per step), one row per epoch (`on_epoch`), the final `Summary` (`on_end`), and is closed. A sink that
wants every step (the live progress bar) sets `live` and gets `on_step`, which must be cheap.

The `logger` config group picks the loggers (`logger=[csv,tensorboard]`); each option is one class here (or
in a module of its own, like `lrtrain.mlflow_logger`) plus one YAML in `configs/logger/`. Ranks other than 0
of a ddp job get no sinks at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from lrtrain.summary import BROKEN, Status, Summary
from lrtrain.writers import CSVLog, truncate_csv


@dataclass
class RunContext:
    """What a sink may want to know about the run it is given."""

    out_dir: Path
    step_columns: list[str]  # the columns of each row `on_steps` receives, in order
    metric_columns: list[str]  # the keys of each row `on_epoch` receives, in order
    config: dict[str, Any]  # the resolved config, as plain containers
    steps_rows: int = 0  # rows already in steps.csv / metrics.csv that belong to this run (resumed in place)
    metrics_rows: int = 0
    resumed_in_place: bool = False
    sweep_dir: Optional[Path] = None  # the sweep this run is a job of, if any
    job_num: Optional[int] = None


class Sink:
    """The interface; every method is optional."""

    live = False  # True: on_step is called after every optimizer step

    def on_start(self, ctx: RunContext) -> None:
        pass

    def on_step(self, step: int, epoch: int, lr: float, loss: Any) -> None:
        """`loss` is a tensor on the device: read it (a host sync) only when it is really needed."""

    def on_steps(self, rows: list[list[Any]]) -> None:
        pass

    def on_epoch(self, row: dict[str, Any]) -> None:
        pass

    def on_message(self, text: str) -> None:
        pass

    def on_end(self, summary: Summary) -> None:
        pass

    def close(self) -> None:
        pass


class CSVLogger(Sink):
    """The outputs contract: steps.csv, metrics.csv, summary.json, and curves.png drawn from them (`plots`).

    Always on: the sweep report, resume and `lrtrain-report` read these files.
    """

    def __init__(self, plots: bool):
        self.plots = plots
        # what draws curves.png when the run ends (None: lrtrain.plots.plot_curves, here and now); a fused group
        # queues it for worker processes instead (lrtrain.sweep.fused)
        self.draw: Optional[Callable[[Path], Any]] = None
        self.steps: Optional[CSVLog] = None
        self.metrics: Optional[CSVLog] = None

    def on_start(self, ctx: RunContext) -> None:
        out = self.out_dir = ctx.out_dir
        if ctx.resumed_in_place:  # rows written after the checkpoint will be written again, identically
            truncate_csv(out / "steps.csv", ctx.steps_rows)
            truncate_csv(out / "metrics.csv", ctx.metrics_rows)
        self.steps = CSVLog(out / "steps.csv", ctx.step_columns)
        self.metrics = CSVLog(out / "metrics.csv", ctx.metric_columns)
        self.metric_columns = ctx.metric_columns
        self.epochs = ctx.metrics_rows

    def on_steps(self, rows: list[list[Any]]) -> None:
        self.steps.write(rows)

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.metrics.write([[row[c] for c in self.metric_columns]])
        self.epochs += 1

    def on_end(self, summary: Summary) -> None:
        self.close()
        summary.write(self.out_dir / "summary.json")
        if self.plots and self.epochs:
            from lrtrain.plots import plot_curves

            (self.draw or plot_curves)(self.out_dir)

    def close(self) -> None:
        for log in (self.steps, self.metrics):
            if log is not None:
                log.close()
        self.steps = self.metrics = None


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optimizer": {"lr": 0.1}}` -> `{"optimizer.lr": 0.1}`; lists and None become strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


# Events TensorBoard's writer thread may hold before `add_event` waits (about 100 bytes each).
EVENT_QUEUE = 10_000


def _fast_checksums() -> None:
    """TensorBoard's record writer checksums every event in pure Python (CRC-32C, about 15 us an event, on the
    writer thread an epoch's flush waits for; tensorflow/tensorboard#4354). Where google-crc32c is installed,
    give the writer its C implementation, once checked to give TensorBoard's own values."""
    try:
        import google_crc32c
        from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return
    if getattr(record_writer, "masked_crc32c", None) is not pywrap_tensorflow.masked_crc32c:
        return  # already given, or a TensorBoard that no longer has it

    def masked_crc32c(data: bytes) -> int:
        x = google_crc32c.value(data)
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    samples = (b"", b"lrtrain", bytes(range(256)))
    if all(masked_crc32c(d) == pywrap_tensorflow.masked_crc32c(d) for d in samples):
        record_writer.masked_crc32c = masked_crc32c


class TensorBoardLogger(Sink):
    """Scalars per step and per epoch, and (`hparams`) the run's config and final metrics in TensorBoard's HParams
    format, so `tensorboard --logdir <sweep dir>` compares a sweep's jobs in the HParams tab."""

    def __init__(self, hparams: bool):
        self.hparams = hparams
        self._writer = None

    def on_start(self, ctx: RunContext) -> None:
        self.log_dir, self.config = ctx.out_dir / "tensorboard", ctx.config
        # every per-step number but the position: train/loss_step, train/lr, train/grad_norm, ...
        self.step_tags = [(i, "train/loss_step" if c == "loss" else f"train/{c}")
                          for i, c in enumerate(ctx.step_columns) if c not in ("step", "epoch", "rollbacks")]
        self.writer  # opened here, before the loop: importing tensorboard (~0.5 s) is not charged to an epoch

    @property
    def writer(self):
        if self._writer is None:  # torch.utils.tensorboard is imported when a run starts, not when lrtrain does
            from torch.utils.tensorboard import SummaryWriter

            _fast_checksums()

            # A queue that holds an epoch's per-step events: with SummaryWriter's default of 10, each `add_event`
            # past the tenth waits for its writer thread to checksum and write the one before (~80 us a step).
            self._writer = SummaryWriter(log_dir=str(self.log_dir), max_queue=EVENT_QUEUE)
        return self._writer

    def on_steps(self, rows: list[list[Any]]) -> None:
        """One event per step holding all its scalars (what add_scalar writes, one value each: half the cost)."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary as TBSummary

        writer, now = self.writer.file_writer, time.time()
        for row in rows:
            values = [TBSummary.Value(tag=tag, simple_value=row[i]) for i, tag in self.step_tags]
            writer.add_event(Event(step=row[0], wall_time=now, summary=TBSummary(value=values)))

    def on_epoch(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in ("epoch", "step"):
                self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def on_end(self, summary: Summary) -> None:
        if self.hparams and summary.status != Status.RUNNING:
            from torch.utils.tensorboard.summary import hparams

            metrics = {f"hparams/{k}": v for k, v in summary_metrics(summary).items()}
            experiment, start, end = hparams(flat_config(self.config), metrics)
            for event in (experiment, start, end):
                self.writer.file_writer.add_summary(event)
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, summary.steps or 0)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def summary_metrics(summary: Summary) -> dict[str, float]:
    """The numbers a run ends with: `best_value` (of trainer.monitor), `final_<metric>` (the last epoch's, the
    LR aside) and `test_<metric>`. The sweep report (sweep_summary.csv, study_summary.csv), TensorBoard's
    HParams and MLflow all use these names, so every view of a sweep agrees."""
    values: dict[str, Any] = {"best_value": summary.best_value}
    values.update({f"final_{k}": v for k, v in (summary.final or {}).items()
                   if k not in ("epoch", "step", "seconds", "lr")})
    values.update(summary.test or {})  # already test_loss, test_acc
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}



def end_sinks(sinks: list[Sink], summary: Summary) -> None:
    """Every sink gets the summary and is closed, even when another one fails; the first error is raised, unless
    the run already ended with one of its own."""
    error: Optional[BaseException] = None
    for sink in sinks:
        try:
            sink.on_end(summary)
        except Exception as e:
            error = error or e
        finally:
            sink.close()
    if error is not None and summary.status not in BROKEN:
        raise error
