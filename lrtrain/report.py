"""Plots and tables built from a run directory on disk (so they can be rebuilt at any time)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback


def read_csv(path: Path) -> dict[str, list[float]]:
    """Columns of a numeric CSV as lists (empty cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: [float(r[k]) if r[k] not in ("", None) else float("nan") for r in rows] for k in rows[0]}


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
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15 if has_acc else 10, 4))
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


# ------------------------------------------------------------------------------------------ sweep reports

# What a job's row says, in this order (sweep_summary.csv's columns before the final and test metrics).
SWEEP_COLUMNS = ["job", "overrides", "status", "cause", "monitor", "best_value", "best_epoch", "seconds"]
OK_STATUSES = ("completed", "early_stopped")
PRUNED = "pruned"  # stopped early by an Optuna pruner (lrtrain/pruning.py): a result, not a failure


def _read_summary(job_dir: Path) -> dict:
    import json

    try:
        return json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):
        # no summary: the job was killed (or never started training) before writing one
        started = (job_dir / "metrics.csv").is_file()
        return {"status": "interrupted", "stop_reason": "no summary.json: the job was stopped" +
                (" while training" if started else " before training")}


def _read_overrides(job_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def job_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's job folders (those Hydra wrote a `.hydra/` into), in job order."""
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """One row per job, read from disk: overrides that differ between jobs, status, best and final metrics."""
    jobs = job_dirs(sweep_dir)
    overrides = [_read_overrides(j) for j in jobs]
    common = set.intersection(*(set(o) for o in overrides)) if len(jobs) > 1 else set()
    rows = []
    for job, job_overrides in zip(jobs, overrides):
        s = _read_summary(job)
        row = {"job": job.name, "overrides": " ".join(o for o in job_overrides if o not in common),
               "status": s.get("status"), "cause": s.get("stop_reason") or "", "monitor": s.get("monitor"),
               "mode": s.get("mode"), "best_value": s.get("best_value"),
               "best_epoch": s.get("best_epoch"), "seconds": s.get("train_seconds"), "dir": job}
        for key, value in (s.get("final") or {}).items():
            if key not in ("epoch", "step", "seconds"):
                row[f"final_{key}"] = value
        row.update(s.get("test") or {})
        if s.get("lr_find"):
            row["suggested_lr"] = s["lr_find"]["suggested_lr"]
        rows.append(row)
    return rows


def _short_overrides(text: str) -> str:
    """`optimizer.lr=0.004430375245218269` as `optimizer.lr=0.00443`, for tables and legends."""
    def short(item: str) -> str:
        key, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            return item
        return f"{key}={number:.3g}" if len(value) > 6 and "." in value else item

    return " ".join(short(item) for item in text.split(" ")) if text else text


def rank(rows: list[dict]) -> list[dict]:
    """Best first by the monitored value (its own min/max mode); jobs that did not complete go last."""
    def key(row: dict) -> tuple:
        ok = row["status"] in OK_STATUSES and row["best_value"] is not None
        value = row["best_value"] if ok else 0.0
        return (not ok, -value if row.get("mode") == "max" else value, row["job"])

    return sorted(rows, key=key)


def write_sweep_csv(rows: list[dict], path: Path) -> None:
    metric_cols = sorted({k for r in rows for k in r if k.startswith("final_")})
    test_cols = sorted({k for r in rows for k in r if k.startswith(("test_", "suggested_"))})
    columns = SWEEP_COLUMNS + metric_cols + test_cols
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else repr(row[c]) if isinstance(row[c], float) else row[c]
                             for c in columns])
    tmp.replace(path)


def sweep_table(rows: list[dict], title: str):
    """The ranking table printed at the end of a sweep (and by `lrtrain-report`)."""
    from rich.table import Table

    from lrtrain.progress import _short

    monitor = next((r["monitor"] for r in rows if r.get("monitor")), "best")
    table = Table(title=title, title_justify="left")
    for name in ("#", "job", "overrides", "status", f"best {monitor} (epoch)", "final val_acc", "seconds",
                 "cause"):
        table.add_column(name, overflow="fold")
    for i, row in enumerate(rows, 1):
        ok = row["status"] in OK_STATUSES
        best = (f"{_short(row['best_value'])} ({row['best_epoch'] + 1})" if row["best_value"] is not None
                and row["best_epoch"] is not None else "-")
        acc = row.get("final_val_acc")
        table.add_row(str(i), row["job"], _short_overrides(row["overrides"]) or "-",
                      f"[green]{row['status']}[/]" if ok else f"[yellow]{PRUNED}[/]" if row["status"] == PRUNED
                      else f"[red]{row['status']}[/]", best,
                      _short(acc) if acc is not None else "-",
                      f"{row['seconds']:.1f}" if row["seconds"] is not None else "-", row["cause"])
    return table


def plot_sweep(rows: list[dict], sweep_dir: Path) -> Path:
    """Write `sweep.png`: every job's monitored validation metric per epoch and its LR per step."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    monitor = next((r["monitor"] for r in rows if r.get("monitor")), "val_loss")
    fig, (ax_val, ax_lr) = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(sorted(rows, key=lambda r: (not r["job"].isdigit(), int(r["job"]) if r["job"].isdigit() else 0))):
        job: Path = row["dir"]
        label = f"{row['job']}: {_short_overrides(row['overrides']) or '(defaults)'}"
        if row["status"] not in OK_STATUSES:
            label += f" [{row['status']}]"
        color = colors[i % len(colors)]
        epochs = read_csv(job / "metrics.csv") if (job / "metrics.csv").is_file() else {}
        steps = read_csv(job / "steps.csv") if (job / "steps.csv").is_file() else {}
        if epochs.get(monitor):
            ax_val.plot([e + 1 for e in epochs["epoch"]], epochs[monitor], marker="o", ms=3, color=color,
                        label=label)
        else:
            ax_val.plot([], [], color=color, label=label)  # keeps the job in the legend
        if steps.get("lr"):
            ax_lr.plot(steps["step"], steps["lr"], color=color)
    ax_val.set(xlabel="epoch", ylabel=monitor, title=f"validation: {monitor}")
    if monitor.endswith("loss"):
        ax_val.set_yscale("log")
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    ax_lr.set_yscale("log")
    fig.legend(*ax_val.get_legend_handles_labels(), loc="outside lower center", ncols=min(3, max(1, len(rows))),
               fontsize="small", frameon=False)
    out = sweep_dir / "sweep.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def report_sweep(sweep_dir: Path, console=None, plots: bool = True) -> list[dict]:
    """Rebuild a sweep's report from disk: sweep_summary.csv, the ranking table, sweep.png. Returns the rows."""
    from rich.console import Console

    rows = rank(sweep_rows(sweep_dir))
    write_sweep_csv(rows, sweep_dir / "sweep_summary.csv")
    if plots and rows:
        plot_sweep(rows, sweep_dir)
    failed = [r for r in rows if r["status"] not in (*OK_STATUSES, PRUNED)]
    pruned = sum(r["status"] == PRUNED for r in rows)
    title = (f"lrtrain sweep · {len(rows)} jobs" + (f" · {pruned} pruned" if pruned else "")
             + (f" · {len(failed)} did not complete" if failed else ""))
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: no reason to squeeze the table into 80 columns
            console.width = max(console.width, 150)
    console.print(sweep_table(rows, title))
    return rows


class SweepReport(Callback):
    """Hydra callback (configs/config.yaml, `hydra.callbacks`): report every sweep when it ends.

    It runs in the launching process whatever the launcher, and only reads the jobs' folders, like
    `lrtrain-report`. `failed` tells `lrtrain`'s entry point to exit non-zero.
    """

    failed: list[dict] = []  # the last sweep's rows that did not complete
    sweep_dir: Optional[Path] = None

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # first what decides the exit status: Hydra turns a callback's exception into a warning
        SweepReport.sweep_dir = sweep_dir
        SweepReport.failed = [r for r in sweep_rows(sweep_dir) if r["status"] not in (*OK_STATUSES, PRUNED)]
        report_sweep(sweep_dir)


def main(argv: Optional[list[str]] = None) -> None:
    """`lrtrain-report DIR`: rebuild a run's curves.png or a sweep's summary, table and sweep.png from disk."""
    import argparse
    import json
    import sys

    from rich.console import Console

    parser = argparse.ArgumentParser(prog="lrtrain-report", description=main.__doc__.split(":", 1)[1].strip())
    parser.add_argument("dir", type=Path, help="a run folder (with summary.json) or a sweep folder")
    parser.add_argument("--no-plots", action="store_true", help="only the table (and sweep_summary.csv)")
    args = parser.parse_args(argv)
    path: Path = args.dir
    if (path / "summary.json").is_file() or (path / "metrics.csv").is_file():
        from lrtrain.progress import summary_table

        if not args.no_plots and (path / "metrics.csv").is_file():
            print(f"wrote {plot_curves(path)}")
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
        if "epochs" in summary:
            Console().print(summary_table(summary))
        elif summary:  # a run that failed before training, or an LR range test
            print(f"{path}: {summary['status']}" + (f": {summary['stop_reason']}" if summary.get("stop_reason")
                                                     else ""))
        return
    if path.is_dir() and job_dirs(path):
        report_sweep(path, plots=not args.no_plots)
        print(f"wrote {path / 'sweep_summary.csv'}" + ("" if args.no_plots else f", {path / 'sweep.png'}"))
        return
    print(f"lrtrain-report: error: {path}: not a run folder (no summary.json or metrics.csv) "
          "nor a sweep folder (no job folders with .hydra/)", file=sys.stderr)
    sys.exit(2)
