"""A sweep as a study: jobs that differ only in a replicate key (the seed) are one configuration, and a
configuration is judged by its mean over replicates and a t-interval around it, not by its luckiest seed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from lrtrain.summary import SUCCEEDED, Status  # SUCCEEDED: the statuses whose metrics are averaged


@dataclass(frozen=True)
class Estimate:
    """A metric over a configuration's completed replicates; std and the interval need n >= 2."""

    n: int
    mean: float
    std: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None

    @property
    def half_width(self) -> Optional[float]:
        return None if self.high is None else self.high - self.mean


def estimate(values: Iterable[Optional[float]], confidence: float) -> Optional[Estimate]:
    """Mean, sample std and Student's t-interval of the finite values (None when there are none)."""
    import numpy as np

    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return None
    mean = float(x.mean())
    if len(x) == 1:
        return Estimate(1, mean)
    # scipy's inverse Student t CDF; scipy.special imports in a third of the time scipy.stats takes
    from scipy.special import stdtrit

    std = float(x.std(ddof=1))
    half = float(stdtrit(len(x) - 1, (1 + confidence) / 2)) * std / math.sqrt(len(x))
    return Estimate(len(x), mean, std, mean - half, mean + half)


Value = Any  # a key's value in a job: a number, a string, a tuple (from a list), None (not set)


@dataclass
class Configuration:
    """The jobs that share `values` (the varied keys that are not replicate keys)."""

    values: dict[str, Value]
    jobs: list[dict] = field(default_factory=list)
    stats: dict[str, Estimate] = field(default_factory=dict)
    rank: Optional[int] = None
    overlaps_best: Optional[bool] = None  # None: no interval to compare (n = 1 here or in the best)

    @property
    def n(self) -> int:
        """Jobs that completed with a monitored value: what the best_value statistics are taken over."""
        return sum(job["status"] in SUCCEEDED and job.get("best_value") is not None for job in self.jobs)

    def count(self, status: str) -> int:
        return sum(job["status"] == status for job in self.jobs)

    @property
    def incomplete(self) -> int:
        """Jobs neither completed (with a value), failed nor diverged: interrupted, pruned, ..."""
        return len(self.jobs) - self.n - self.count(Status.FAILED) - self.count(Status.DIVERGED)


def varied_keys(settings: Sequence[dict[str, Value]]) -> list[str]:
    """The keys whose value is not the same in every job, in the order they first appear."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in keys if len({hashable(s.get(k)) for s in settings}) > 1]


def group(jobs: Sequence[dict], keys: Sequence[str], metrics: Sequence[str], confidence: float) -> list[Configuration]:
    """Jobs (dicts with `settings`, `status` and the metrics) grouped by their values of `keys`, each group
    summarised over its completed jobs, in order of first appearance."""
    configs: dict[tuple, Configuration] = {}
    for job in jobs:
        values = {k: job["settings"].get(k) for k in keys}
        key = tuple(hashable(v) for v in values.values())
        configs.setdefault(key, Configuration(values)).jobs.append(job)
    for config in configs.values():
        done = [job for job in config.jobs if job["status"] in SUCCEEDED]
        for metric in metrics:
            stat = estimate((job.get(metric) for job in done), confidence)
            if stat is not None:
                config.stats[metric] = stat
    return list(configs.values())


def rank(configs: list[Configuration], metric: str, mode: str) -> list[Configuration]:
    """Best mean first (min or max by `mode`), configurations without a value last; marks the ones whose
    interval overlaps the best one's, i.e. not distinguishable from the best at their n."""
    sign = -1.0 if mode == "max" else 1.0

    def key(config: Configuration) -> tuple:
        stat = config.stats.get(metric)
        return (stat is None, sign * stat.mean if stat else 0.0)

    ranked = sorted(configs, key=key)  # stable: ties keep the sweep's order
    for i, config in enumerate(ranked, 1):
        config.rank = i
    best = ranked[0].stats.get(metric) if ranked else None
    for config in ranked[1:]:
        stat = config.stats.get(metric)
        if best is not None and best.low is not None and stat is not None and stat.low is not None:
            config.overlaps_best = stat.low <= best.high and best.low <= stat.high
    return ranked


def hashable(value: Value) -> Value:
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, hashable(v)) for k, v in value.items()))
    return value


def difference(a: Iterable[Optional[float]], b: Iterable[Optional[float]], confidence: float) -> Optional[Estimate]:
    """mean(a) - mean(b) over their finite values, with Welch's t-interval (unequal variances); no interval
    unless each side has n >= 2 and they are not both constant (metrics counted in epochs or images often are:
    their spread is then unknown, not zero). n is that of `a`."""
    import numpy as np

    x = np.array([v for v in a if v is not None and math.isfinite(v)], dtype=float)
    y = np.array([v for v in b if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0 or len(y) == 0:
        return None
    mean = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Estimate(len(x), mean)
    from scipy.special import stdtrit

    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if vx + vy == 0:
        return Estimate(len(x), mean)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))  # Welch-Satterthwaite
    half = float(stdtrit(df, (1 + confidence) / 2)) * math.sqrt(vx + vy)
    return Estimate(len(x), mean, math.sqrt(vx + vy), mean - half, mean + half)


# ------------------------------------------------------------------------------------ LR transfer across width

# Keys that set a model's width (a list of layer sizes counts as its widest layer).
WIDTH_KEYS = ("model.hidden", "model.n_embd", "model.width", "model.channels")


def width_of(value: Value) -> float:
    return max(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class TransferRow:
    """One width's best LR within a panel (one value of every other varied key)."""

    panel: tuple  # the other varied keys' values
    width: float
    best: Configuration  # the configuration with the best mean at this width
    lr: Value
    shift: int  # grid steps from the smallest width's best LR (+: a larger LR); the grid: the panel's LRs


def transfer(configs: Sequence[Configuration], width_key: str, x_key: str, others: Sequence[str],
             metric: str, mode: str) -> list[TransferRow]:
    """Per panel (the values of `others`) and width, the configuration whose mean `metric` is best and where its
    `x_key` (the LR) sits in the panel's grid of LRs against the smallest width's, in steps of that grid."""
    sign = -1.0 if mode == "max" else 1.0
    panels: dict[tuple, list[Configuration]] = {}
    for config in configs:
        panels.setdefault(tuple(hashable(config.values[k]) for k in others), []).append(config)
    rows = []
    for panel, members in panels.items():
        grid = sorted({c.values[x_key] for c in members})
        widths: dict[float, list[Configuration]] = {}
        for config in members:
            if metric in config.stats:
                widths.setdefault(width_of(config.values[width_key]), []).append(config)
        first = None
        for width in sorted(widths):
            best = min(widths[width], key=lambda c: sign * c.stats[metric].mean)
            index = grid.index(best.values[x_key])
            first = index if first is None else first
            rows.append(TransferRow(panel, width, best, best.values[x_key], index - first))
    return rows
