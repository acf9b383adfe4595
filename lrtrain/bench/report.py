"""What a benchmark shows: the performance profile plot (one line per submission) and a rich table of scores,
times and ratios, with the differences from the best that are within noise marked as such."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lrtrain.bench.scoring import R_MAX, Times, profile


def plot_profiles(times: Times, path: Path, r_max: float = R_MAX) -> Path:
    """performance_profile.png: rho(tau) of each submission over [1, r_max], drawn as the step function it is."""
    import matplotlib

    matplotlib.use("Agg")  # off-screen, as lrtrain/plots.py draws
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]  # profiles often coincide over a stretch: a dashed line shows beneath another
    for i, (name, ratios) in enumerate(times.ratios().items()):
        steps = sorted({1.0, r_max, *(r for r in ratios if 1 <= r <= r_max)})
        ax.step(steps, [profile(ratios, tau) for tau in steps], where="post", lw=2.5 - 0.4 * (i % 4),
                ls=styles[i % 4], label=name)
    n = len(times.workloads)
    ax.set(xlim=(1, r_max), ylim=(-0.02, 1.02), xlabel="ratio to the best time on the workload (tau)",
           ylabel=f"fraction of workloads (of {n}) within tau", title="performance profiles")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _time(value: float, unit: str) -> str:
    if value == float("inf"):
        return "inf"
    return f"{value:g}" if unit == "steps" else f"{value:.2f}"  # a median of two studies may end in .5


def table(times: Times, by_name: dict[str, float], unit: str, title: str,
          noise: Optional[dict[tuple[str, str], bool]] = None) -> Any:
    """A rich Table: submissions best first, their score, and each workload's time (ratio to the best). With
    `noise`, a (submission, workload) whose difference from the best submission's time is within its interval
    is marked `~`: the table does not rank it."""
    from rich.table import Table

    ratios = times.ratios()
    out = Table(title=title, title_justify="left", caption_justify="left")
    out.add_column("submission")
    out.add_column("score", justify="right")
    for workload in times.workloads:
        out.add_column(f"{workload}\n{unit} (ratio)", justify="right")
    for name, value in by_name.items():
        cells = []
        for j, workload in enumerate(times.workloads):
            t, r = times.rows[name][j], ratios[name][j]
            mark = "~" if noise and noise.get((name, workload)) else ""
            cells.append("not reached" if t == float("inf") else f"{_time(t, unit)} ({r:.2f}{mark})")
        out.add_row(name, f"{value:.3f}", *cells)
    if noise:
        out.caption = "~: within the confidence interval of the best submission's time (not a ranking)"
    return out
