"""A run's curves.png, drawn from its steps.csv and metrics.csv (so it can be redrawn at any time)."""

from __future__ import annotations

import csv
import signal
from pathlib import Path
from typing import Any, Optional, Sequence


def read_csv(path: Path, columns: Optional[Sequence[str]] = None) -> dict[str, list[float]]:
    """Columns of a numeric CSV as lists (empty cells become NaN): all of them, or the named ones it has."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return {}
    header = rows[0]
    wanted = [(k, header.index(k)) for k in (header if columns is None else columns) if k in header]
    return {k: [float(r[i]) if i < len(r) and r[i] != "" else float("nan") for r in rows[1:]] for k, i in wanted}


def figure(**kwargs: Any) -> Any:
    """A matplotlib Figure drawn off-screen by Agg, without pyplot (nothing global to close). matplotlib is
    imported here, on first use: it costs half a second that a run without plots never pays."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_curves(run_dir: Path) -> Path:
    """Write `curves.png`: loss (per step and per epoch), accuracy when classifying, and the LR."""
    steps = read_csv(run_dir / "steps.csv")
    epochs = read_csv(run_dir / "metrics.csv")
    fig, lines = _curves_figure(bool(steps), bool(epochs), "val_acc" in epochs)
    for line, table, column in lines:
        rows = steps if table == "steps" else epochs
        line.set_data(rows["step"], rows[column])
    for ax in fig.axes:
        ax.relim()
        ax.autoscale_view()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=110, pil_kwargs={"compress_level": 1})  # zlib's fastest level: a third less time
    return out


# One figure per layout, kept for the process and refilled with each run's data: a sweep's jobs all draw
# the same figure, and a fresh figure costs about twice as much to render as a refilled one.
_CURVES: dict[tuple[bool, bool, bool], tuple] = {}


def _curves_figure(has_steps: bool, has_epochs: bool, has_acc: bool) -> tuple:
    """The figure and its lines, each with the table and column it plots against the step."""
    key = (has_steps, has_epochs, has_acc)
    if key in _CURVES:
        return _CURVES[key]
    fig = figure(figsize=(15 if has_acc else 10, 4))
    axes = fig.subplots(1, 3 if has_acc else 2)
    # Fixed margins: a layout engine doubles the cost of this figure, which every run (and sweep job) draws.
    fig.subplots_adjust(left=0.06 if has_acc else 0.08, right=0.99, bottom=0.13, top=0.91, wspace=0.3)
    lines = []

    def plot(ax, table: str, y: str, **style) -> None:
        (line,) = ax.plot([], [], **style)
        lines.append((line, table, y))

    ax = axes[0]
    if has_steps:
        plot(ax, "steps", "loss", lw=0.6, alpha=0.35, label="train (per step)")
    if has_epochs:
        plot(ax, "epochs", "train_loss", marker="o", ms=3, label="train (epoch mean)")
        plot(ax, "epochs", "val_loss", marker="o", ms=3, label="validation")
    ax.set(xlabel="optimizer step", ylabel="loss", title="loss")
    ax.set_yscale("log")
    if has_steps or has_epochs:  # else no line is labelled, and matplotlib would warn
        ax.legend()
    if has_acc:
        ax = axes[1]
        plot(ax, "epochs", "train_acc", marker="o", ms=3, label="train")
        plot(ax, "epochs", "val_acc", marker="o", ms=3, label="validation")
        ax.set(xlabel="optimizer step", ylabel="accuracy", title="accuracy")
        ax.legend()
    ax = axes[-1]
    if has_steps:
        plot(ax, "steps", "lr")
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    _CURVES[key] = fig, lines
    return _CURVES[key]


class CurvesPool:
    """Worker processes that draw runs' curves.png: a fused sweep ends all its replicas at once, and drawing
    their plots one after another (about 0.2 s each on one core) is most of what keeps it from exiting.

    Plots are queued (`add`) and drawn at `draw`, when the caller trains nothing: a worker drawing while
    torch trains on the same cores slows training far more than the plot costs (torch's OpenMP threads wait
    for the core it takes). The workers are forked from a fork server that imported matplotlib and not torch
    (forking a process that runs torch's threads is not safe); the server and the workers start in the
    background when the pool is made, to overlap what the caller does meanwhile. Workers ignore Ctrl-C: the
    runs that end on it still get their curves. A plot a worker could not draw (the pool broke, or the plot
    raised) is drawn again here, so a failure says what drawing it in-process says."""

    def __init__(self, workers: int):
        import multiprocessing
        import threading
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["lrtrain.plots", "matplotlib.figure", "matplotlib.backends.backend_agg"])
        self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start)
        self.queued: list[Path] = []
        # Starting a worker waits for the server to have imported matplotlib (about 0.5 s): a thread waits.
        self.starting = threading.Thread(target=self._start, args=(workers,), name="lrtrain-curves", daemon=True)
        self.starting.start()

    def _start(self, workers: int) -> None:
        try:
            for _ in range(workers):  # each worker draws a first figure (fonts, layout) before a run needs one
                self.pool.submit(_warm_up)
        except RuntimeError:  # closed before its workers started
            pass

    def add(self, run_dir: Path) -> None:
        """Queue `run_dir`'s curves.png (drawn from its steps.csv and metrics.csv, complete by now)."""
        self.queued.append(run_dir)

    def draw(self) -> dict[Path, Exception]:
        """Draw every queued curves.png; the run dirs whose plot failed, with the error."""
        queued, self.queued = self.queued, []
        futures: dict[Path, Any] = {}
        for run_dir in queued:
            try:
                futures[run_dir] = self.pool.submit(plot_curves, run_dir)
            except Exception:  # the pool broke (a worker was killed): drawn here
                futures[run_dir] = None
        failed: dict[Path, Exception] = {}
        for run_dir, future in futures.items():
            if future is None or future.exception() is not None:
                try:
                    plot_curves(run_dir)
                except Exception as e:
                    failed[run_dir] = e
        return failed

    def close(self) -> None:
        """Draw what is queued, and stop the workers."""
        self.draw()
        self.starting.join()
        self.pool.shutdown()


def _worker_start() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm_up() -> None:
    """A worker's first figure and fonts, so that its first run's plot costs what the others do."""
    import io

    fig, _ = _curves_figure(True, True, True)
    fig.savefig(io.BytesIO(), dpi=110, format="png")


# ------------------------------------------------------------------------------------------ sweep reports
