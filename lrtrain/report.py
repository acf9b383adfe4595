"""Plots and tables built from a run directory on disk (so they can be rebuilt at any time)."""

from __future__ import annotations

import csv
from pathlib import Path


def read_csv(path: Path) -> dict[str, list[float]]:
    """Columns of a numeric CSV as lists (empty cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: [float(r[k]) if r[k] not in ("", None) else float("nan") for r in rows] for k in rows[0]}


def plot_curves(run_dir: Path) -> Path:
    """Write `curves.png`: loss (per step and per epoch), accuracy when classifying, and the LR."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    steps = read_csv(run_dir / "steps.csv")
    epochs = read_csv(run_dir / "metrics.csv")
    has_acc = "val_acc" in epochs
    fig, axes = plt.subplots(1, 3 if has_acc else 2, figsize=(15 if has_acc else 10, 4), constrained_layout=True)
    ax = axes[0]
    if steps:
        ax.plot(steps["step"], steps["loss"], lw=0.6, alpha=0.35, label="train (per step)")
    if epochs:
        ax.plot(epochs["step"], epochs["train_loss"], marker="o", ms=3, label="train (epoch mean)")
        ax.plot(epochs["step"], epochs["val_loss"], marker="o", ms=3, label="validation")
    ax.set(xlabel="optimizer step", ylabel="loss", title="loss")
    ax.set_yscale("log")
    ax.legend()
    if has_acc:
        ax = axes[1]
        ax.plot(epochs["step"], epochs["train_acc"], marker="o", ms=3, label="train")
        ax.plot(epochs["step"], epochs["val_acc"], marker="o", ms=3, label="validation")
        ax.set(xlabel="optimizer step", ylabel="accuracy", title="accuracy")
        ax.legend()
    ax = axes[-1]
    if steps:
        ax.plot(steps["step"], steps["lr"])
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
