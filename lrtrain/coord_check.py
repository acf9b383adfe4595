"""The coordinate check (`mode=coord_check`, Yang et al. 2022, Appendix D; mup's `get_coord_data`): the size of
every layer's output over the first training steps, at growing widths.

Under a parametrization where the learning rate transfers (μP), each layer's typical coordinate stays the same
size as the model widens; under the standard one with Adam, the output layer's grows with width after the first
update (the update adds lr x width to each logit). For each width and seed, the run the config describes is
built at that width and takes `steps` training steps, as training takes them (the schedule's LR, the step
function); forward hooks record the mean absolute value of each layer's output in each step's forward pass.
Step t is the forward after t updates (0: the initialisation). "Layers" are the modules that hold parameters
(Linear, Embedding, LayerNorm, ...), in the order the forward pass reaches them, so the output layer is last.

Writes `coord_check.csv` (width, step, layer, seed, mean_abs) and `coord_check.png`: one panel per step,
mean_abs (the mean over seeds) against width, both on log axes, one line per layer.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lrtrain.loop import Run
from lrtrain.optimizers import train_mode
from lrtrain.signals import STOP


@dataclass
class CoordCheck:
    widths: list[int]
    steps: int
    seeds: list[int]
    make_run: Callable[[int, int], Run]  # (width, seed) -> the configured run at that width and seed
    out_dir: Path
    title: str  # what the picture is of: model, parametrization, optimizer and LR

    def run(self, plots: bool) -> Path:
        """Every width and seed; write coord_check.csv (and .png with `plots`); return the CSV's path."""
        values: dict[tuple[int, int, str, int], float] = {}
        layers: list[str] = []
        for width in self.widths:
            for seed in self.seeds:
                order, stats = record(self.make_run(width, seed), self.steps)
                layers = order
                for (step, layer), v in stats.items():
                    values[width, step, layer, seed] = v
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "coord_check.csv"
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["width", "step", "layer", "seed", "mean_abs"])
            for width in self.widths:
                for step in range(self.steps):
                    for layer in layers:
                        for seed in self.seeds:
                            out.writerow([width, step, layer, seed, repr(values[width, step, layer, seed])])
        if plots:
            plot_coord_check(path, self.title)
        print(f"coord_check: {len(self.widths)} widths x {len(self.seeds)} seeds x {self.steps} steps; {path}",
              flush=True)
        return path


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]


def record(run: Run, steps: int) -> tuple[list[str], dict[tuple[int, str], float]]:
    """Take `steps` training steps of `run`; return its layers in forward order and {(step, layer): mean |output|}."""
    model, opt, data = run.model, run.optimizer, run.data
    order: list[str] = []
    stats: dict[tuple[int, str], float] = {}
    step_now = [0]

    def hook(label: str):
        def f(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if (step_now[0], label) not in stats:  # a module called twice counts once, where first reached
                if step_now[0] == 0:
                    order.append(label)
                stats[step_now[0], label] = output.detach().float().abs().mean().item()
        return f

    handles = [m.register_forward_hook(hook(f"{name}:{type(m).__name__}")) for name, m in _layers(model)]
    generator = torch.Generator(device=run.device).manual_seed(run.settings.seed)
    step = run.step_fn()
    base_lrs = [g["lr"] for g in opt.param_groups]
    batches = iter(())
    model.train()
    train_mode(opt)
    try:
        for t in range(steps):
            if STOP:
                raise KeyboardInterrupt
            stored, y = next(batches, (None, None))
            if stored is None:  # a new epoch of the batches training draws
                batches = data.train_batches(generator)
                stored, y = next(batches)
            step_now[0] = t
            step(stored, y, [run.schedule(t, base) for base in base_lrs])
    finally:
        for h in handles:
            h.remove()
    return order, stats


def plot_coord_check(path: Path, title: str = "") -> Path:
    """coord_check.png beside coord_check.csv: a panel per step, mean |output| against width, a line per layer."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from matplotlib.figure import Figure

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    widths = sorted({int(r["width"]) for r in rows})
    steps = sorted({int(r["step"]) for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    sums: dict[tuple[int, int, str], list[float]] = {}
    for r in rows:
        sums.setdefault((int(r["width"]), int(r["step"]), r["layer"]), []).append(float(r["mean_abs"]))
    fig = Figure(figsize=(3.2 * len(steps) + 2.5, 3.6))
    axes = fig.subplots(1, len(steps), sharey=True, squeeze=False)[0]
    cmap = matplotlib.colormaps["viridis"]
    for ax, step in zip(axes, steps):
        for i, layer in enumerate(layers):
            means = [sum(v) / len(v) for v in (sums[w, step, layer] for w in widths)]
            last = i == len(layers) - 1
            ax.plot(widths, means, marker="o", ms=3, lw=2.2 if last else 1.2, label=layer,
                    color="crimson" if last else cmap(i / max(1, len(layers) - 1)))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"step {step}")
        ax.set_xlabel("width")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("mean |output|")
    right = 1 - 2.3 / fig.get_figwidth()  # 2.3 inches for the legend
    fig.subplots_adjust(left=0.06, right=right, bottom=0.15, top=0.88, wspace=0.08)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(right + 0.005, 0.5),
               fontsize=7, frameon=False)
    fig.suptitle(f"coordinate check: {title}" if title else "coordinate check", fontsize=10)
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out
