"""Progress: a live rich bar on a terminal, one plain line per epoch otherwise, and the final table (a sink)."""

from __future__ import annotations

import time
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lrtrain.loggers import Sink
from lrtrain.summary import BROKEN, Summary

# The bar reads the loss (a host sync on a GPU) at most this often, so the display costs nothing per step.
REFRESH_SECONDS = 0.2


class ProgressDisplay(Sink):
    def __init__(self, mode: str, total_steps: int, total_epochs: int, batch_size: int,
                 console: Optional[Console] = None):
        self.console = console or Console(stderr=False)
        self.batch_size = batch_size
        self._last_step, self._last_time = 0, time.perf_counter()
        if mode == "auto":
            mode = "rich" if self.console.is_terminal else "plain"
        self.mode, self.total_epochs = mode, total_epochs
        self._bar: Optional[Progress] = None
        self._next_refresh = 0.0
        self._task = None
        if mode == "rich":
            self._bar = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("train", total=total_steps, epoch=1, epochs=total_epochs,
                                            loss="-", lr="-", speed="")
            self._bar.start()
        self.live = self._bar is not None

    def on_step(self, step: int, epoch: int, lr: float, loss: Any) -> None:
        """Cheap unless a refresh is due; `loss` is a tensor and is only read when shown."""
        if self._bar is None:
            return
        now = time.perf_counter()
        if now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_SECONDS
        speed = (step - self._last_step) * self.batch_size / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        self._bar.update(self._task, completed=step, epoch=epoch + 1, loss=f"{float(loss):.4f}",
                         lr=f"{lr:.3g}", speed=f"{speed:,.0f} samples/s")

    def on_epoch(self, row: dict[str, Any]) -> None:
        text = "  ".join(f"{k} {short(v)}" for k, v in row.items() if k not in ("epoch",))
        if self._bar is not None:
            self._bar.update(self._task, completed=row["step"])
            self._bar.console.print(f"epoch {row['epoch'] + 1}/{self.total_epochs}  {text}", highlight=False)
        elif self.mode == "plain":
            print(f"epoch {row['epoch'] + 1}/{self.total_epochs}  {text}", flush=True)

    def on_message(self, text: str) -> None:
        if self.mode != "none":
            self.console.print(text, highlight=False)

    def on_end(self, summary: Summary) -> None:
        self.close()
        if self.mode != "none" and summary.status not in BROKEN:
            self.console.print(summary_table(summary))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def short(v: Any) -> str:
    """A number as the tables show it."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_table(summary: Summary) -> Table:
    """The end-of-run table: status, best epoch, final and test metrics, speed."""
    table = Table(title=f"lrtrain · {summary.status}", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    rows: list[tuple[str, Any]] = [("run dir", summary.run_dir)]
    if summary.stop_reason:
        rows.append(("stop reason", summary.stop_reason))
    if summary.best_epoch is not None:
        rows.append((f"best {summary.monitor}", f"{short(summary.best_value)} (epoch {summary.best_epoch + 1})"))
    for key, value in (summary.final or {}).items():
        if key not in ("epoch", "step", "seconds"):
            rows.append((f"final {key}", short(value)))
    for key, value in (summary.test or {}).items():
        rows.append((key, short(value)))
    rows += [("epochs · steps", f"{summary.epochs} · {summary.steps}"),
             ("train time", f"{summary.train_seconds:.2f} s"),
             ("throughput", f"{summary.samples_per_second:,.0f} samples/s"),
             ("device", summary.device)]
    for key, value in rows:
        table.add_row(key, str(value))
    return table
