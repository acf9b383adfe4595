"""The fused launcher's work on each job (`hydra/launcher=fused`, whose Hydra shell is
hydra_plugins/lrtrain_launcher/fused.py): build the job's run, or train it alone when it cannot fuse, then
group the kept runs and train each group (lrtrain.sweep.fused)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class Prepared:
    """What the task of one job left for the launcher: its built run, or the value it already returned."""

    def __init__(self) -> None:
        self.run: Any = None
        self.out_dir: Optional[Path] = None
        self.job: Optional[int] = None
        self.solo: Optional[str] = None  # why it trained alone
        self.skipped = False


def prepare(cfg: DictConfig, box: Prepared) -> Optional[float]:
    """The task of one job: build its run and keep it in `box` (None is returned for now), or, for a job that
    cannot fuse, train it now as `lrtrain.cli.train` would and return its value."""
    from lrtrain import cli
    from lrtrain.signals import STOP

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    box.out_dir, box.job = out_dir, hydra_cfg.job.num
    from lrtrain import rundir

    state = rundir.claim_job(out_dir, cfg, hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log")
    if state == "reuse":
        box.skipped = True
        return cli.reused(out_dir, box.job)
    if STOP:
        return cli.train(cfg)  # a sweep interrupted before this job: listed as not started
    if state == "resume" and not cfg.trainer.resume:
        cfg.trainer.resume = "auto"  # a job of this sweep that was killed or interrupted: continue it in place
    reason = _unfusable_config(cfg)
    if reason is not None:
        return _solo(cfg, box, reason)
    if cfg.trainer.progress in ("auto", "rich"):
        # one live bar per job at once is not possible (rich has one live display); the launcher says what runs
        import sys

        if cfg.trainer.progress == "rich" or sys.stdout.isatty():
            cfg.trainer.progress = "none"
    try:
        from lrtrain.build import build
        from lrtrain.config import validate

        validate(cfg)
        run = build(cfg, out_dir, Path(hydra_cfg.sweep.dir), box.job)
    except Exception as e:
        cli.record_failure(out_dir, e)
        return cli.failed(e, box.job)
    from lrtrain.sweep.fused import unfusable

    reason = unfusable(run)
    if reason is not None:
        box.solo = reason
        log.info(f"solo: job {box.job} ({reason})")
        return _fit_alone(run, box)
    box.run = run
    return None


def _solo(cfg: DictConfig, box: Prepared, reason: str) -> Optional[float]:
    from lrtrain import cli

    box.solo = reason
    log.info(f"solo: job {box.job} ({reason})")
    return cli.train(cfg)


def _fit_alone(run: Any, box: Prepared) -> Optional[float]:
    from lrtrain import cli
    from lrtrain.loop import fit

    try:
        summary = fit(run)
    except Exception as e:
        return cli.failed(e, box.job)
    return cli.outcome(summary, box.out_dir, box.job)


def _unfusable_config(cfg: DictConfig) -> Optional[str]:
    """Why a job cannot fuse, seen in its config before anything is built."""
    if cfg.mode != "train":
        return f"mode={cfg.mode}"
    if cfg.optimizer.get("lr") == "auto":
        return "optimizer.lr=auto runs the LR range test first"
    if cfg.fork["from"] is not None:
        return "fork.from: a fork's config is composed from its parent's (lrtrain.forks), then it trains alone"
    return None


def train_groups(returns: list[JobReturn], prepared: list[Prepared], curves: Any = None) -> None:
    """Group the kept runs, train each group, and set each job's return value. With `curves` (a CurvesPool),
    the fused jobs' curves.png are drawn by its workers once every group has trained."""
    waiting = [(ret, box) for ret, box in zip(returns, prepared) if box.run is not None]
    if not waiting:
        return
    from lrtrain import cli
    from lrtrain.sweep.fused import fit_fused, group_key

    groups: dict[str, list[tuple[JobReturn, Prepared]]] = {}
    for ret, box in waiting:
        groups.setdefault(group_key(box.run), []).append((ret, box))
    from lrtrain.signals import STOP
    from lrtrain.summary import Status, Summary

    drawn: dict[Path, tuple[JobReturn, Prepared]] = {}  # fused jobs that ended, by their run dir
    for members in groups.values():
        jobs = [box.job for _, box in members]
        if STOP:  # the sweep was interrupted before these jobs trained: listed as not started, as cli.train does
            for ret, box in members:
                Summary(status=Status.NOT_STARTED, stop_reason=f"the sweep was interrupted by {STOP.name} before this job",
                        run_dir=str(box.out_dir)).write(box.out_dir / "summary.json")
                ret.return_value, box.run = None, None
            continue
        if len(members) == 1:
            ret, box = members[0]
            log.info(f"solo: job {box.job} (no other job of this batch has its model, data and batch size)")
            ret.return_value = _fit_alone(box.run, box)
            box.run = None
            continue
        log.info(f"fused: jobs {', '.join(map(str, jobs))} as one model of {len(members)} replicas")
        runs = [box.run for _, box in members]
        for run in runs[1:]:  # one copy of the data for the group (on a GPU each job moved its own)
            run.data = runs[0].data
        started = time.perf_counter()
        results = fit_fused(runs, label=",".join(map(str, jobs)), curves=curves)
        log.info(f"fused: jobs {', '.join(map(str, jobs))} trained in {time.perf_counter() - started:.2f} s")
        for (ret, box), result in zip(members, results):
            if isinstance(result, BaseException):
                ret.return_value = cli.failed(result, box.job)
            else:
                ret.return_value = cli.outcome(result, box.out_dir, box.job)
                drawn[box.out_dir] = ret, box
            box.run = None
    if curves is not None:  # a plot that failed fails its job, as it does when the CSV logger draws it
        for out_dir, error in curves.draw().items():
            if out_dir in drawn:
                ret, box = drawn[out_dir]
                ret.return_value = cli.failed(error, box.job)
