"""Sweep reports built from the job directories on disk (so they can be rebuilt at any time)."""

from __future__ import annotations

import csv
import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from lrtrain.loggers import summary_metrics
from lrtrain.plots import figure, read_csv
from lrtrain.summary import SUCCEEDED, Status, Summary
from lrtrain.writers import atomic_path
from lrtrain.sweep.study import (WIDTH_KEYS, Configuration, Estimate, TransferRow, group, hashable, transfer, varied_keys,
                           width_of)
from lrtrain.sweep.study import rank as rank_configurations

if TYPE_CHECKING:
    from lrtrain.config import ReportConfig


# ------------------------------------------------------------------------------------------ sweep reports

# What a job's row says, in this order (sweep_summary.csv's columns before the final and test metrics).
SWEEP_COLUMNS = ["job", "overrides", "status", "cause", "monitor", "best_value", "best_epoch", "seconds"]
# Keys that say how to report, not what was trained: they never tell two configurations apart.
NOT_CONFIGURATION = ("report.",)


def _read_summary(job_dir: Path) -> dict:
    from lrtrain.summary import read_checked

    try:
        return read_checked(job_dir / "summary.json")
    except OSError:
        # no summary: the job was killed (or never started training) before writing one
        started = (job_dir / "metrics.csv").is_file()
        return {"status": Status.INTERRUPTED, "stop_reason": "no summary.json: the job was stopped" +
                (" while training" if started else " before training")}


# What each file Hydra writes into a job's .hydra/ holds: a file that holds something else was not written by
# Hydra (or was edited), and is refused by name rather than failing deep inside the report.
_HYDRA_FILES = {"config.yaml": (dict, "a config (a mapping)"), "hydra.yaml": (dict, "Hydra's settings (a mapping)"),
                "overrides.yaml": (list, "a list of overrides")}


def _read_yaml(path: Path) -> Any:
    """A file Hydra wrote (plain YAML), read with PyYAML's C loader: OmegaConf.load is 20x slower. None when it
    is missing or not YAML; InputFileError when one of Hydra's files holds the wrong kind of value."""
    import yaml

    from lrtrain.errors import InputFileError

    try:
        with open(path) as f:
            value = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return None
    kind, what = _HYDRA_FILES.get(path.name, (object, ""))
    if value is not None and not isinstance(value, kind):
        raise InputFileError(f"{path}: expected {what}, found {type(value).__name__} (not written by Hydra?)")
    return value


def _read_overrides(job_dir: Path) -> list[str]:
    return [str(o) for o in _read_yaml(job_dir / ".hydra" / "overrides.yaml") or []]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's job folders (those Hydra wrote a `.hydra/` into), in job order; a trial of a search that trains
    several seeds (`hydra.sweeper.seeds`) holds its jobs one level down, `<trial>/<k>`."""
    jobs = []
    for p in sweep_dir.iterdir():
        if not p.is_dir():
            continue
        if (p / ".hydra").is_dir():
            jobs.append(p)
        elif p.name.isdigit():
            jobs += sorted((q for q in p.iterdir() if q.is_dir() and (q / ".hydra").is_dir()), key=_job_order)
    return sorted(jobs, key=lambda q: tuple(map(_job_order, map(Path, q.relative_to(sweep_dir).parts))))


def _job_order(path: Path) -> tuple:
    return not path.name.isdigit(), int(path.name) if path.name.isdigit() else 0, path.name


def unreported(sweep_dir: Path) -> list[Path]:
    """Folders of a sweep that hold a summary.json but no `.hydra/`: what they ran is unknown, so no report
    can place them (a job whose .hydra/ was deleted, or a run copied in)."""
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and not (p / ".hydra").is_dir()
                   and (p / "summary.json").is_file()), key=_job_order)


def find_jobs(dirs: Sequence[Path]) -> list[tuple[str, Path]]:
    """(label, folder) of every job in these sweep folders (a run folder is one job of its own). Labels are job
    numbers for one sweep, paths below the folders' common parent when several are combined."""
    found: dict[Path, None] = {}
    for d in dirs:
        for job in [d] if (d / ".hydra").is_dir() else job_dirs(d):
            found.setdefault(job.resolve())
    if len(dirs) == 1 and not (dirs[0] / ".hydra").is_dir():
        root = dirs[0].resolve()
        return [(str(job.relative_to(root)), job) for job in found]
    base = Path(os.path.commonpath([d.resolve() for d in dirs]))
    return [(str(job.relative_to(base)) if job != base else job.name, job) for job in found]


@functools.cache
def _override_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


@functools.lru_cache(maxsize=4096)
def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` as Hydra's own grammar reads it, so that `1e-3` and `0.001` are one value and `[a,b]` a
    list (as a tuple); `~key` is None. Group choices keep their group as key: `scheduler=cosine`."""
    try:
        o = _override_parser().parse_override(text)
        key = o.key_or_group + (f"@{o.package}" if o.package else "")
        value = None if o.is_delete() else o.value()
    except Exception:  # not Hydra's syntax (a hand-edited file): compare it as text
        key, _, value = text.lstrip("+~").partition("=")
    return key, hashable(value)


def _composed_values(job: Path, keys: Iterable[str]) -> dict[str, Any]:
    """Keys a job did not override, as it ran them: group choices from .hydra/hydra.yaml, values from
    .hydra/config.yaml (None where neither has the key)."""
    config = _read_yaml(job / ".hydra" / "config.yaml") or {}
    hydra = (_read_yaml(job / ".hydra" / "hydra.yaml") or {}).get("hydra")
    runtime = (hydra or {}).get("runtime") if isinstance(hydra, dict) else None
    choices = (runtime or {}).get("choices") if isinstance(runtime, dict) else None
    choices = choices if isinstance(choices, dict) else {}
    values = {}
    for key in keys:
        if key in choices:
            values[key] = choices[key]
            continue
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[key] = hashable(node)
    return values


def _job_settings(jobs: Sequence[Path], overrides: Sequence[list[str]]) -> list[dict[str, Any]]:
    """Each job's value of every key that some job overrides (report.* aside): its own override, else what
    its composed config says (the other sweep's default, when sweeps are combined)."""
    settings = [{k: v for k, v in map(parse_override, job_overrides) if not k.startswith(NOT_CONFIGURATION)}
                for job_overrides in overrides]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    for job, s in zip(jobs, settings):
        missing = [k for k in keys if k not in s]
        if missing:
            s.update(_composed_values(job, missing))
    return settings


def sweep_rows(dirs: Path | Sequence[Path]) -> list[dict]:
    """One row per job, read from disk: overrides that differ between jobs, status, best and final metrics,
    and `settings`, the job's value of every overridden key (what tells configurations apart)."""
    jobs = find_jobs([dirs] if isinstance(dirs, Path) else list(dirs))
    overrides = [_read_overrides(path) for _, path in jobs]
    common = set.intersection(*(set(o) for o in overrides)) if len(jobs) > 1 else set()
    settings = _job_settings([path for _, path in jobs], overrides)
    rows = []
    for (label, job), job_overrides, job_settings in zip(jobs, overrides, settings):
        s = _read_summary(job)
        row = {"job": label, "overrides": " ".join(o for o in job_overrides if o not in common),
               "status": capped(s.get("status")), "cause": capped(s.get("stop_reason") or ""),
               "monitor": s.get("monitor"),
               "mode": s.get("mode"), "best_value": s.get("best_value"),
               "best_epoch": s.get("best_epoch"), "seconds": s.get("train_seconds"), "dir": job,
               "settings": job_settings, "metrics": summary_metrics(Summary.from_dict(s))}
        row.update(row["metrics"])
        if (s.get("final") or {}).get("lr") is not None:
            row["final_lr"] = s["final"]["lr"]
        if s.get("lr_find"):
            row["suggested_lr"] = s["lr_find"]["suggested_lr"]
        if isinstance(s.get("fork"), dict):
            row["fork"] = s["fork"]
        if isinstance(s.get("pbt"), dict):
            row["pbt"] = s["pbt"]
        rows.append(row)
    return rows


CAP = 500  # characters of a job's own text (its status, the cause it stopped) that the report shows and writes


def capped(text: Optional[str]) -> Optional[str]:
    """A summary's free text cut to CAP characters: a crash or a hostile file can leave megabytes, which would
    hang the table and fill sweep_summary.csv."""
    if text is None or len(text) <= CAP:
        return text
    return f"{text[:CAP]}... ({len(text):,} characters in all)"


def _show(value: Any) -> str:
    """A key's value for tables and legends: `0.004430375245218269` as `0.00443`."""
    if isinstance(value, float):
        text = repr(value)
        return f"{value:.3g}" if len(text) > 6 else text
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_show, value)) + "]"
    return "null" if value is None else str(value)


def _exact(value: Any) -> str:
    """A key's value for CSV files: floats exactly (repr round-trips), nothing for unset."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_exact, value)) + "]"
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


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
        ok = row["status"] in SUCCEEDED and row["best_value"] is not None
        value = row["best_value"] if ok else 0.0
        return (not ok, -value if row.get("mode") == "max" else value, row["job"])

    return sorted(rows, key=key)


def _write_csv(path: Path, columns: list[str], rows: Iterable[dict]) -> None:
    """Written beside and renamed into place, so a reader never sees half a file."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else repr(row[c]) if isinstance(row[c], float) else row[c]
                             for c in columns])


def write_sweep_csv(rows: list[dict], path: Path) -> None:
    metric_cols = sorted({k for r in rows for k in r if k.startswith("final_")})
    test_cols = sorted({k for r in rows for k in r if k.startswith(("test_", "suggested_"))})
    _write_csv(path, SWEEP_COLUMNS + metric_cols + test_cols, rows)


def sweep_table(rows: list[dict], title: str):
    """The ranking table of a sweep without replicates: one row per job."""
    from rich.table import Table

    from lrtrain.progress import short

    monitor = next((r["monitor"] for r in rows if r.get("monitor")), "best")
    # language models: bits per character says more than next-token accuracy
    final = "final_val_bpc" if any("final_val_bpc" in r for r in rows) else "final_val_acc"
    table = Table(title=title, title_justify="left")
    for name in ("#", "job", "overrides", "status", f"best {monitor} (epoch)", final.replace("_", " ", 1), "seconds",
                 "cause"):
        table.add_column(name, overflow="fold")
    for i, row in enumerate(rows, 1):
        ok = row["status"] in SUCCEEDED
        best = (f"{short(row['best_value'])} ({row['best_epoch'] + 1})" if row["best_value"] is not None
                and row["best_epoch"] is not None else "-")
        acc = row.get(final)
        table.add_row(str(i), row["job"], _short_overrides(row["overrides"]) or "-",
                      f"[green]{row['status']}[/]" if ok else f"[yellow]{Status.PRUNED}[/]" if row["status"] == Status.PRUNED
                      else f"[red]{row['status']}[/]", best,
                      short(acc) if acc is not None else "-",
                      f"{row['seconds']:.1f}" if row["seconds"] is not None else "-", row["cause"])
    return table


# ------------------------------------------------------------------------------------------------- studies


@dataclass
class Study:
    """A sweep's jobs as configurations (see lrtrain/sweep/study.py), ranked best first."""

    rows: list[dict]  # one per job, in sweep order
    settings: ReportConfig
    keys: list[str]  # the varied keys that tell configurations apart
    replicates: list[str]  # the replicate keys that vary
    configs: list[Configuration]
    metrics: list[str]  # summary_metrics' names found in the jobs
    monitor: str
    mode: str
    searched: list[str] = field(default_factory=list)  # an Optuna search's parameters

    @property
    def grouped(self) -> bool:
        """Some configuration has more than one job: report means and intervals, not single jobs."""
        return any(len(c.jobs) > 1 for c in self.configs)

    def label(self, config: Configuration) -> str:
        return " ".join(f"{k}={_show(v)}" for k, v in config.values.items()) or "(defaults)"

    @property
    def sensitivity_key(self) -> Optional[str]:
        """What lr_sensitivity.png plots against: report.x when the sweep varies it. An Optuna search over
        several parameters has search.png instead (its trials share no other key to draw lines by)."""
        x = self.settings.x
        return x if x in self.keys and len(self.searched) < 2 else None

    @property
    def transfer_key(self) -> Optional[str]:
        """The width key, when the sweep varies one and report.x (the LR): lr_transfer.png and transfer.csv."""
        if self.sensitivity_key is None:
            return None
        return next((k for k in WIDTH_KEYS if k in self.keys), None)

    def in_sweep_order(self) -> list[Configuration]:
        return sorted(self.configs, key=lambda c: self.rows.index(c.jobs[0]))

    def transfer(self) -> list[TransferRow]:
        width = self.transfer_key
        others = [k for k in self.keys if k not in (width, self.settings.x)]
        return transfer(self.in_sweep_order(), width, self.settings.x, others, "best_value", self.mode)


def analyse(rows: list[dict], settings: ReportConfig, searched: Sequence[str] = ()) -> Study:
    """Group the jobs into configurations by the keys that vary between them, replicate keys aside. Forks of
    parents that differ only in a replicate key (one constant run per seed) are replicates of one configuration."""
    for row in rows:
        if row.get("fork") and "fork.from" in row["settings"]:
            row["settings"]["fork.from"] = _parent_configuration(Path(row["fork"]["parent"]), settings.replicate_keys)
    varied = varied_keys([row["settings"] for row in rows])
    keys = [k for k in varied if k not in settings.replicate_keys]
    metrics = list(dict.fromkeys(k for row in rows for k in row["metrics"]))
    done = [row for row in rows if row.get("monitor")]
    monitor, mode = (done[0]["monitor"], done[0]["mode"] or "min") if done else ("val_loss", "min")
    configs = rank_configurations(group(rows, keys, metrics, settings.confidence), "best_value", mode)
    return Study(rows, settings, keys, [k for k in varied if k in settings.replicate_keys], configs, metrics,
                 monitor, mode, [p for p in searched if p in varied])


def _parent_configuration(parent: Path, replicate_keys: Sequence[str]) -> str:
    """A fork's parent as a configuration: its overrides, replicate keys and Hydra's aside."""
    keep = [o for o in _read_overrides(parent) if parse_override(o)[0] not in replicate_keys
            and not parse_override(o)[0].startswith(("hydra.", *NOT_CONFIGURATION))]
    return " ".join(sorted(keep)) or "(defaults)"


# The lineage of a configuration of forks, in study_summary.csv: from its jobs' summary.json.
FORK_COLUMNS = ["fork_parents", "fork_step", "fork_cooldown", "fork_shape", "fork_min_lr"]


def _lineage(config: Configuration) -> dict[str, Any]:
    forks = [job["fork"] for job in config.jobs if job.get("fork")]
    if not forks:
        return {}
    return {"fork_parents": ";".join(sorted({f["parent"] for f in forks})),
            **{f"fork_{k}": forks[0][k] for k in ("step", "cooldown", "shape", "min_lr")}}


def report_settings(node: Any = None) -> ReportConfig:
    """The `report` config node as its range-checked schema; configs/report/default.yaml when there is none
    (a sweep run before lrtrain had one)."""
    from omegaconf import OmegaConf

    from lrtrain.config import ReportConfig
    from lrtrain.errors import ConfigValueError

    if node is None:
        from lrtrain.paths import config_dir

        node = OmegaConf.load(Path(config_dir(), "report", "default.yaml"))
        node.pop("defaults", None)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ReportConfig), node))
    except ConfigValueError as e:
        raise e.under("report") from None


def settings_of(rows: list[dict]) -> ReportConfig:
    """The report settings the jobs ran with (their .hydra/config.yaml), the defaults when they had none."""
    for row in rows:
        node = (_read_yaml(row["dir"] / ".hydra" / "config.yaml") or {}).get("report")
        if node is not None:
            return report_settings(node)
    return report_settings()


def searched_params(dirs: Sequence[Path], rows: list[dict]) -> list[str]:
    """The parameters an Optuna search varied: its optimization_results.yaml, or while it is unfinished, the
    search space in a trial's .hydra/hydra.yaml."""
    params: dict[str, None] = {}
    for d in dirs:
        results = _read_yaml(d / "optimization_results.yaml") or {}
        params.update(dict.fromkeys(results.get("best_params") or {}))
    if not params and rows:
        sweeper = ((_read_yaml(rows[0]["dir"] / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}).get("sweeper")
        if isinstance(sweeper, dict) and "optuna" in str(sweeper.get("_target_", "")).lower():
            params.update(dict.fromkeys(sweeper.get("params") or {}))
    return list(params)


def _fmt_estimate(stat: Optional[Estimate]) -> str:
    from lrtrain.progress import short

    if stat is None:
        return "-"
    return short(stat.mean) + (f" ± {stat.half_width:.2g}" if stat.half_width is not None else "")


def study_table(study: Study, title: str):
    """The ranking table of a sweep with replicates: one row per configuration, mean ± half the interval."""
    from rich.table import Table

    from lrtrain.progress import short

    level = f"{study.settings.confidence:.0%}"
    ns = sorted({c.n for c in study.configs if c.n})
    at_n = f"n = {ns[0]}" if len(ns) == 1 else "these n"
    table = Table(title=title, title_justify="left", caption_justify="left",
                  caption=f"± : half the {level} t-interval over {', '.join(study.replicates) or 'replicates'}"
                          f" · ≈ best: its interval overlaps the best one's, not distinguishable from the best "
                          f"at {at_n} · worse: the intervals are apart")
    extra = [m for m in ("final_val_acc", "final_val_bpc", "test_acc") if m in study.metrics]
    for name in ("#", "configuration", "n", f"best {study.monitor}", "std",
                 *(m.replace("_", " ", 1) for m in extra), "not completed", "vs best"):
        table.add_column(name, overflow="fold")
    for config in study.configs:
        stat = config.stats.get("best_value")
        lost = ", ".join(f"{count} {what}" for count, what in ((config.count(Status.FAILED), "failed"),
                         (config.count(Status.DIVERGED), "diverged"), (config.incomplete, "incomplete")) if count)
        mark = ("[bold green]best[/]" if config.rank == 1 and stat else "≈ best" if config.overlaps_best else
                "worse" if config.overlaps_best is False else "")
        table.add_row(str(config.rank), study.label(config), f"{config.n}/{len(config.jobs)}" if
                      config.n < len(config.jobs) else str(config.n), _fmt_estimate(stat),
                      short(stat.std) if stat and stat.std is not None else "-",
                      *(_fmt_estimate(config.stats.get(m)) for m in extra), f"[red]{lost}[/]" if lost else "",
                      mark)
    return table


def write_study_csv(study: Study, plotted: dict[int, dict], path: Path) -> None:
    """study_summary.csv: one row per configuration, best first, with its statistics and, under
    `sensitivity_*`, the points lr_sensitivity.png drew for it (read back from the figure)."""
    columns = ["rank", "configuration", *study.keys, "jobs", "n", "failed", "diverged", "incomplete", "monitor",
               "monitor_mode", "confidence"]
    for metric in study.metrics:
        columns += [f"{metric}_{s}" for s in ("mean", "std", "ci_low", "ci_high")]
        if metric == "best_value":
            columns.append("overlaps_best")
    columns += list(dict.fromkeys(k for points in plotted.values() for k in points))
    if any(row.get("fork") for row in study.rows):
        columns += FORK_COLUMNS
    rows = []
    for config in study.configs:
        row = {"rank": config.rank, "configuration": study.label(config), "jobs": len(config.jobs),
               "n": config.n, "failed": config.count(Status.FAILED), "diverged": config.count(Status.DIVERGED),
               "incomplete": config.incomplete, "monitor": study.monitor, "monitor_mode": study.mode,
               "confidence": study.settings.confidence, "overlaps_best": config.overlaps_best,
               **{k: _exact(v) for k, v in config.values.items()}, **plotted.get(id(config), {}),
               **_lineage(config)}
        for metric, stat in config.stats.items():
            row.update({f"{metric}_mean": stat.mean, f"{metric}_std": stat.std, f"{metric}_ci_low": stat.low,
                        f"{metric}_ci_high": stat.high})
        rows.append(row)
    _write_csv(path, columns, rows)


# --------------------------------------------------------------------------------------------------- plots


def _figure(**kwargs):
    """A matplotlib Figure without pyplot (nothing global to close), drawn by Agg. Margins are set by hand:
    a layout engine measures every tick label and takes longer than drawing the figure."""
    return figure(**kwargs)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", pil_kwargs={"compress_level": 1})  # zlib's fastest: as curves.png
    return path


def _colors(n: int) -> list:
    import matplotlib

    if n <= 10:
        return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positions(values: Sequence[Any]) -> tuple[list[float], Optional[list[str]]]:
    """Where values go on an axis: numbers as themselves, anything else as ordered categories (returned
    as tick labels); categories sort by their leading number when they have one (0%, 5%, 10%)."""
    if all(_is_number(v) for v in values):
        return [float(v) for v in values], None

    def natural(text: str) -> tuple:
        match = re.match(r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?", text)
        return (0, float(match.group()), text) if match else (1, 0.0, text)

    categories = sorted({_show(v) for v in values}, key=natural)
    return [float(categories.index(_show(v))) for v in values], categories


def _log(ax, axis: str) -> None:
    """A log axis labelled 0.001 rather than in mathtext (10^-3): mathtext's first label costs 0.3 s."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):  # matplotlib's choice of which ticks to label, as plain numbers
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    getattr(ax, f"set_{axis}scale")("log")
    getattr(ax, f"{axis}axis").set_major_formatter(Plain())
    getattr(ax, f"{axis}axis").set_minor_formatter(Plain(labelOnlyBase=False))


def _title(ax, text: str) -> None:
    # placed at the top explicitly: matplotlib would otherwise measure every tick label to place it
    ax.set_title(text, y=1.0)


def _scale(ax, axis: str, values: Sequence[float]) -> None:
    """Log scale for positive values that span a decade or more; a few ticks on a linear one."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) >= 10:
        _log(ax, axis)
    else:
        from matplotlib.ticker import MaxNLocator

        getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(nbins=5))


def plot_sweep(study: Study, path: Path) -> Path:
    """sweep.png: per configuration the validation curve (its jobs' mean with a band across them, when it has
    several) and the LR per step; without replicates one curve per job, as in a plain sweep."""
    import warnings

    import numpy as np

    monitor, band = study.monitor, study.settings.band
    fig = _figure(figsize=(13, 4.8))
    ax_val, ax_lr = fig.subplots(1, 2)
    configs = sorted(study.configs, key=lambda c: study.rows.index(c.jobs[0]))  # the sweep's order
    for color, config in zip(_colors(len(configs)), configs):
        done = [job for job in config.jobs if job["status"] in SUCCEEDED]
        if len(config.jobs) == 1:  # as in a sweep without replicates
            row = config.jobs[0]
            label = f"{row['job']}: {_short_overrides(row['overrides']) or '(defaults)'}"
            label += "" if done else f" [{row['status']}]"
            drawn = config.jobs
        else:
            lost = len(config.jobs) - len(done)
            label = f"{study.label(config)} (n={len(done)}{f', {lost} not completed' if lost else ''})"
            drawn = done
        curves = [read_csv(job["dir"] / "metrics.csv", [monitor]) for job in drawn
                  if (job["dir"] / "metrics.csv").is_file()]
        curves = [c[monitor] for c in curves if c.get(monitor)]
        if not curves:
            ax_val.plot([], [], color=color, label=label)  # keeps the configuration in the legend
        elif len(curves) == 1:
            ax_val.plot(range(1, len(curves[0]) + 1), curves[0], marker="o", ms=3, color=color, label=label)
        else:
            values = np.full((len(curves), max(map(len, curves))), np.nan)
            for i, curve in enumerate(curves):
                values[i, :len(curve)] = curve
            epochs = np.arange(1, values.shape[1] + 1)
            with warnings.catch_warnings():  # epochs that only some replicates reached (early stopping)
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(values, axis=0)
                if band == "std":
                    spread = np.nan_to_num(np.nanstd(values, axis=0, ddof=1))
                    low, high = mean - spread, mean + spread
                else:
                    low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
            ax_val.plot(epochs, mean, marker="o", ms=3, color=color, label=label)
            ax_val.fill_between(epochs, low, high, color=color, alpha=0.2, lw=0)
        lr_job = next((job for job in done + config.jobs if (job["dir"] / "steps.csv").is_file()), None)
        steps = read_csv(lr_job["dir"] / "steps.csv", ["step", "lr"]) if lr_job else {}
        if steps.get("lr"):
            ax_lr.plot(steps["step"], steps["lr"], color=color)
    title = f"validation: {monitor}"
    if study.grouped:
        title += f" (mean over {', '.join(study.replicates) or 'replicates'}; band: " + \
                 ("± 1 std)" if band == "std" else "min to max)")
    ax_val.set(xlabel="epoch", ylabel=monitor)
    _title(ax_val, title)
    if monitor.endswith("loss"):
        _log(ax_val, "y")
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate")
    _title(ax_lr, "learning rate" + (" (one job per configuration)" if study.grouped else ""))
    _log(ax_lr, "y")
    ncols = min(3, max(1, len(configs)))
    legend_rows = -(-len(configs) // ncols)
    height = 4.8 + 0.2 * legend_rows  # inches: the axes keep their size, the legend gets its rows below
    fig.set_size_inches(13, height)
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.35 / height, bottom=(0.75 + 0.2 * legend_rows) / height,
                        wspace=0.2)
    fig.legend(*ax_val.get_legend_handles_labels(), loc="lower center", ncols=ncols, fontsize="small",
               frameon=False)
    return _save(fig, path)


def plot_pbt(rows: list[dict], path: Path) -> Path:
    """pbt_lr.png: the LR each trial of a population-based training trained with, step by step (steps.csv), its
    exploits marked where it took another trial's weights: the LR schedules PBT found."""
    jobs = [r for r in rows if r.get("pbt")]
    fig = _figure(figsize=(8, 5))
    ax = fig.subplots()
    for color, row in zip(_colors(len(jobs)), jobs):
        steps_csv = Path(row["dir"]) / "steps.csv"
        curve = read_csv(steps_csv, ["step", "lr"]) if steps_csv.is_file() else {}
        if not curve.get("lr"):
            continue
        ax.plot(curve["step"], curve["lr"], color=color, lw=1.2, label=f"trial {row['job']}")
        at = [e["at_step"] for e in row["pbt"].get("exploits") or [] if isinstance(e, dict) and "at_step" in e]
        lrs = dict(zip(curve["step"], curve["lr"]))
        ax.scatter(at, [lrs.get(s, float("nan")) for s in at], color=color, marker="v", s=30, zorder=3)
    ax.set(xlabel="optimizer step", ylabel="learning rate")
    _log(ax, "y")
    _title(ax, "population-based training: the LR each trial trained with (v: it continued from another trial)")
    if jobs:
        ax.legend(fontsize="small", frameon=False, ncol=2)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.1)
    return _save(fig, path)


def plot_cooldown(study: Study, path: Path) -> Path:
    """cooldown.png: each parent's validation loss against steps, and each configuration of forks' final
    validation loss at its last step (fork step + cooldown), one line per fork.shape, its replicates' mean with
    its t-interval. What one constant run and its forks say about loss against training length."""
    import numpy as np

    forks = [c for c in study.configs if any(job.get("fork") for job in c.jobs)]
    fig = _figure(figsize=(8, 5))
    ax = fig.subplots()
    parents = sorted({job["fork"]["parent"] for c in forks for job in c.jobs if job.get("fork")})
    for i, parent in enumerate(parents):
        curve = read_csv(Path(parent) / "metrics.csv", ["step", "val_loss"]) if (
            Path(parent) / "metrics.csv").is_file() else {}
        if curve.get("val_loss"):
            ax.plot(curve["step"], curve["val_loss"], color="0.45", lw=1, alpha=0.8,
                    label="constant-LR parent" + ("s" if len(parents) > 1 else "") if i == 0 else None)
    shapes = sorted({job["fork"]["shape"] for c in forks for job in c.jobs if job.get("fork")})
    for color, shape in zip(_colors(len(shapes)), shapes):
        points = []
        for config in forks:
            lineage = _lineage(config)
            stat = config.stats.get("final_val_loss")
            if lineage["fork_shape"] == shape and stat is not None:
                points.append((lineage["fork_step"] + lineage["fork_cooldown"], stat))
        points.sort(key=lambda p: p[0])
        if not points:
            continue
        x = np.array([p[0] for p in points])
        mean = np.array([p[1].mean for p in points])
        err = np.array([[p[1].mean - p[1].low, p[1].high - p[1].mean] if p[1].low is not None else [0, 0]
                        for p in points]).T
        ax.errorbar(x, mean, yerr=err, marker="o", ms=4, capsize=3, color=color, label=f"forks: {shape}")
    ax.set(xlabel="optimizer step (the parent's and the cooldown's)", ylabel="val_loss")
    _log(ax, "y")
    replicates = (f"\nbars: the {study.settings.confidence:.0%} t-interval over the parents' replicates"
                  if any(c.n > 1 for c in forks) else "")
    _title(ax, f"cooldown forks: the final val_loss at fork step + cooldown{replicates}")
    ax.legend(fontsize="small", frameon=False)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.88, bottom=0.1)
    return _save(fig, path)


def _better(metric: str, study: Study) -> str:
    if metric == "best_value":
        return study.mode
    return "max" if metric.endswith("acc") else "min"


def plot_sensitivity(study: Study, path: Path) -> dict[int, dict[str, Any]]:
    """lr_sensitivity.png: the monitored metric (and the final val_acc) against `report.x`, one line per value
    of the other varied keys, error bars the t-interval over replicates, the best point starred. Returns what
    was drawn for each configuration (by id), read back from the figure's artists."""
    x = study.sensitivity_key
    panels = ["best_value"] + (["final_val_acc"] if "final_val_acc" in study.metrics and
                               study.monitor != "val_acc" else [])
    others = [k for k in study.keys if k != x]
    lines: dict[tuple, list[Configuration]] = {}
    for config in study.configs:
        lines.setdefault(tuple(config.values[k] for k in others), []).append(config)
    positions, categories = _positions([c.values[x] for c in study.configs])
    where = {id(c): p for c, p in zip(study.configs, positions)}
    fig = _figure(figsize=(6.2 * len(panels), 4.8))
    fig.subplots_adjust(left=0.09 if len(panels) > 1 else 0.14, right=0.98, top=0.86, bottom=0.11, wspace=0.25)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    plotted: dict[int, dict[str, Any]] = {}
    for ax, metric in zip(axes, panels):
        name = f"best {study.monitor}" if metric == "best_value" else metric.replace("_", " ", 1)
        drawn = []
        for color, (values, configs) in zip(_colors(len(lines)), lines.items()):
            configs = sorted((c for c in configs if metric in c.stats), key=lambda c: where[id(c)])
            if not configs:
                continue
            stats = [c.stats[metric] for c in configs]
            low = [s.mean - s.low if s.low is not None else math.nan for s in stats]
            high = [s.high - s.mean if s.high is not None else math.nan for s in stats]
            line = " ".join(f"{k}={_show(v)}" for k, v in zip(others, values)) or name
            bars = ax.errorbar([where[id(c)] for c in configs], [s.mean for s in stats], yerr=[low, high],
                               marker="o", ms=4, capsize=3, color=color, label=line)
            points, segments = bars.lines[0].get_xydata(), (bars.lines[2][0].get_segments() if bars.lines[2]
                                                            else [[]] * len(configs))
            for config, (px, py), segment in zip(configs, points, segments):
                out = plotted.setdefault(id(config), {"sensitivity_line": line})
                out["sensitivity_x"] = categories[int(px)] if categories else float(px)
                out[f"sensitivity_{metric}"] = float(py)
                out[f"sensitivity_{metric}_low"] = float(segment[0][1]) if len(segment) else None
                out[f"sensitivity_{metric}_high"] = float(segment[1][1]) if len(segment) else None
                drawn.append((config, px, py))
        if drawn:
            sign = -1 if _better(metric, study) == "max" else 1
            config, px, py = min(drawn, key=lambda d: sign * d[2])
            ax.plot([px], [py], marker="*", ms=18, color="gold", mec="black", ls="none", zorder=5,
                    label=f"best: {study.label(config)}")
        if categories:
            ax.set_xticks(range(len(categories)), categories)
        else:
            _scale(ax, "x", positions)
        if metric.endswith("loss") or (metric == "best_value" and study.monitor.endswith("loss")):
            _scale(ax, "y", [d[2] for d in drawn])
        ax.set(xlabel=x, ylabel=name)
        _title(ax, f"{name} vs {x}")
        ax.grid(True, which="major", alpha=0.3)
        if drawn:  # a panel with no point (every job failed) has nothing to label: matplotlib would warn
            ax.legend(fontsize="small")
    ns = sorted({c.n for c in study.configs if c.n})
    if ns and ns[-1] > 1:
        n = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}"
        note = (f"mean over {', '.join(study.replicates) or 'replicates'} ({n}); error bars: "
                f"{study.settings.confidence:.0%} t-interval")
    else:
        note = "one job per point (no replicates, no error bars)"
    fig.suptitle(note, fontsize="medium")
    _save(fig, path)
    return plotted


def write_transfer_csv(study: Study, path: Path) -> Path:
    """transfer.csv: per width (and value of every other varied key), the best LR, its monitored metric's mean
    and interval over replicates, and how many steps of the swept LR grid it moved from the smallest width's."""
    width, x = study.transfer_key, study.settings.x
    others = [k for k in study.keys if k not in (width, x)]
    rows = []
    for t in study.transfer():
        stat = t.best.stats["best_value"]
        rows.append({**{k: _exact(t.best.values[k]) for k in others}, "width": t.width, width: _exact(t.best.values[width]),
                     f"best_{x}": _exact(t.lr), "monitor": study.monitor, "mean": stat.mean, "ci_low": stat.low,
                     "ci_high": stat.high, "n": stat.n, "grid_steps_from_smallest": t.shift})
    _write_csv(path, [*others, "width", width, f"best_{x}", "monitor", "mean", "ci_low", "ci_high", "n",
                      "grid_steps_from_smallest"], rows)
    return path


def plot_transfer(study: Study, path: Path) -> Path:
    """lr_transfer.png: the monitored metric against the LR, one curve per width (mean and t-interval over
    replicates), each width's best LR starred; one panel per value of the other varied keys (sp and mup side
    by side when the sweep varies model.parametrization). Where the LR transfers, the stars line up."""
    import matplotlib

    width, x = study.transfer_key, study.settings.x
    others = [k for k in study.keys if k not in (width, x)]
    best = {(t.panel, t.width): t for t in study.transfer()}
    panels: dict[tuple, list[Configuration]] = {}
    for config in study.in_sweep_order():  # panels in the order the sweep gave the values (sp,mup: sp first)
        panels.setdefault(tuple(hashable(config.values[k]) for k in others), []).append(config)
    widths = sorted({width_of(c.values[width]) for c in study.configs})
    cmap = matplotlib.colormaps["viridis"]
    colors = {w: cmap(0.85 * i / max(1, len(widths) - 1)) for i, w in enumerate(widths)}
    fig = _figure(figsize=(5.6 * len(panels) + 0.4, 4.6))
    fig.subplots_adjust(left=0.6 / (5.6 * len(panels) + 0.4), right=0.98, top=0.85, bottom=0.12, wspace=0.12)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    ys: list[float] = []
    for ax, (panel, configs) in zip(axes, panels.items()):
        for w in widths:
            line = sorted((c for c in configs if width_of(c.values[width]) == w and "best_value" in c.stats),
                          key=lambda c: c.values[x])
            if not line:
                continue
            stats = [c.stats["best_value"] for c in line]
            low = [s.mean - s.low if s.low is not None else math.nan for s in stats]
            high = [s.high - s.mean if s.high is not None else math.nan for s in stats]
            t = best[panel, w]
            ax.errorbar([c.values[x] for c in line], [s.mean for s in stats], yerr=[low, high], marker="o", ms=3,
                        capsize=2, color=colors[w], label=f"{w:g}: best {_show(t.lr)} ({t.shift:+d})")
            ax.plot([t.lr], [t.best.stats["best_value"].mean], marker="*", ms=16, color=colors[w], mec="black",
                    ls="none", zorder=5)
            ys += [s.mean for s in stats]
        _log(ax, "x")
        ax.set_xlabel(x)
        _title(ax, " ".join(f"{k}={_show(v)}" for k, v in zip(others, panel)) or f"best {study.monitor} vs {x}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small", title=f"{width}: best {x} (grid steps)", title_fontsize="small")
    if study.monitor.endswith("loss"):
        _scale(axes[0], "y", ys)
    axes[0].set_ylabel(f"best {study.monitor}")
    ns = sorted({c.n for c in study.configs if c.n})
    note = (f"mean over {', '.join(study.replicates) or 'replicates'} (n = {ns[-1]}), "
            f"{study.settings.confidence:.0%} t-interval" if ns and ns[-1] > 1 else "one job per point")
    fig.suptitle(f"LR transfer across {width}: {note}; stars: each width's best", fontsize="medium")
    return _save(fig, path)


def plot_search(study: Study, path: Path) -> dict[str, list[tuple[Any, float]]]:
    """search.png: an Optuna search's objective against each searched parameter, one panel each, the trials
    coloured by their order and the best one starred. Returns each panel's (value, objective) points, read
    back from the figure."""
    done = [(i, row) for i, row in enumerate(study.rows) if row["status"] in SUCCEEDED
            and row.get("best_value") is not None]
    params = study.searched
    fig = _figure(figsize=(3.8 * len(params) + 1.2, 4.2))
    fig.subplots_adjust(left=0.6 / (3.8 * len(params) + 1.2), right=0.93, top=0.86, bottom=0.13, wspace=0.08)
    axes = fig.subplots(1, len(params), sharey=True, squeeze=False)[0]
    ys = [row["best_value"] for _, row in done]
    order = [int(row["job"]) if row["job"].isdigit() else i for i, row in done]
    best = (max if study.mode == "max" else min)(range(len(done)), key=lambda i: ys[i]) if done else None
    points: dict[str, list[tuple[Any, float]]] = {}
    scatter = None
    for ax, param in zip(axes, params):
        xs, categories = _positions([row["settings"].get(param) for _, row in done])
        scatter = ax.scatter(xs, ys, c=order, cmap="viridis", s=28, zorder=3)
        points[param] = [(categories[int(px)] if categories else float(px), float(py))
                         for px, py in scatter.get_offsets()]
        if best is not None:
            ax.plot([xs[best]], [ys[best]], marker="*", ms=18, color="gold", mec="black", ls="none", zorder=4,
                    label="best trial")
        if categories:
            ax.set_xticks(range(len(categories)), categories)
        else:
            _scale(ax, "x", xs)
        ax.set(xlabel=param)
        _title(ax, param)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"objective: best {study.monitor}")
    if best is not None:
        axes[0].legend(fontsize="small")
    if study.monitor.endswith("loss"):
        _scale(axes[0], "y", ys)
    if scatter is not None and done:
        from matplotlib.ticker import MaxNLocator

        fig.colorbar(scatter, ax=list(axes), label="trial (job number)", ticks=MaxNLocator(integer=True))
    fig.suptitle(f"{len(done)} completed trials of {len(study.rows)}", fontsize="medium")
    _save(fig, path)
    return points


# ------------------------------------------------------------------------------------------------- reports


def report_sweep(dirs: Path | Sequence[Path], settings: Optional[ReportConfig] = None,
                 out_dir: Optional[Path] = None, console=None, plots: bool = True,
                 rows: Optional[list[dict]] = None) -> Study:
    """Rebuild a sweep's report from disk (or several sweeps' combined, into `out_dir`): sweep_summary.csv,
    study_summary.csv, the ranking table, sweep.png, lr_sensitivity.png and an Optuna search's search.png.
    `settings` defaults to the `report` node the jobs ran with."""
    from rich.console import Console

    dirs = [dirs] if isinstance(dirs, Path) else list(dirs)
    out_dir = out_dir or dirs[0]
    rows = sweep_rows(dirs) if rows is None else rows
    study = analyse(rows, settings or settings_of(rows), searched_params(dirs, rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "sweep_summary.csv", out_dir / "study_summary.csv"]
    write_sweep_csv(rank(rows), written[0])
    plotted: dict[int, dict] = {}
    if plots and rows:
        written.append(plot_sweep(study, out_dir / "sweep.png"))
        if study.sensitivity_key:
            plotted = plot_sensitivity(study, out_dir / "lr_sensitivity.png")
            written.append(out_dir / "lr_sensitivity.png")
        if len(study.searched) >= 2:
            plot_search(study, out_dir / "search.png")
            written.append(out_dir / "search.png")
        if any(row.get("fork") for row in rows):
            written.append(plot_cooldown(study, out_dir / "cooldown.png"))
        if study.transfer_key:
            written.append(plot_transfer(study, out_dir / "lr_transfer.png"))
        if any(row.get("pbt") for row in rows):
            written.append(plot_pbt(rows, out_dir / "pbt_lr.png"))
    write_study_csv(study, plotted, written[1])
    if study.transfer_key:
        written.append(write_transfer_csv(study, out_dir / "transfer.csv"))

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: no reason to squeeze the table into 80 columns
            console.width = max(console.width, 150)
    failed = [r for r in rows if r["status"] not in (*SUCCEEDED, Status.PRUNED)]
    pruned = sum(r["status"] == Status.PRUNED for r in rows)
    title = f"lrtrain sweep · {len(rows)} jobs"
    if study.grouped:
        title += f" in {len(study.configs)} configurations"
    title += f" · {pruned} pruned" if pruned else ""
    title += f" · {len(failed)} did not complete" if failed else ""
    if study.grouped:
        console.print(study_table(study, title))
        for row in failed[:5]:
            console.print(f"  job {row['job']} {row['status']}: {row['cause']}", highlight=False)
        if len(failed) > 5:
            console.print(f"  ... and {len(failed) - 5} more (sweep_summary.csv)", highlight=False)
    else:
        console.print(sweep_table(rank(rows), title))
    console.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)
    return study
