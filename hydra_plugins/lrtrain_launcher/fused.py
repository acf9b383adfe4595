"""`hydra/launcher=fused`: the jobs of a batch that share a model and its data train together (lrtrain.fused).

Each job goes through Hydra's `run_job` as under the default launcher (its dir, `.hydra/`, its log, the
callbacks), with a task that builds the job's run (`lrtrain.build.build`, as `lrtrain.cli` does) and keeps
it. Jobs that cannot fuse (another optimizer, dropout, mode=lr_find, ...) train right there, alone, as the default
launcher would. The kept runs are then grouped (`lrtrain.fused.group_key`: model, data set and split, batch
size, device, precision); each group of two or more trains fused, a group of one alone. Each job's return
value is then what `lrtrain.cli.train` returns for it, for sweepers.

Running the same sweep again into the same `hydra.sweep.dir` resumes it, by the rule every launcher follows
(lrtrain.rundir.job_state): a job whose dir holds a finished run of its configuration is not trained again (its
value is read back), one of its configuration unfinished (killed, interrupted) resumes from its `last.pt` in
place, and a dir holding another configuration's run stops the sweep before any job trains.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, open_dict

from hydra_plugins.lrtrain_launcher import LrtrainLauncher

log = logging.getLogger(__name__)


class Prepared:
    """What the task of one job left for the launcher: its built run, or the value it already returned."""

    def __init__(self) -> None:
        self.run: Any = None
        self.out_dir: Optional[Path] = None
        self.job: Optional[int] = None
        self.solo: Optional[str] = None  # why it trained alone
        self.skipped = False


class FusedLauncher(LrtrainLauncher):
    """Builds every job of a batch, then trains each group of compatible jobs as one vectorized model."""

    def __init__(self, curve_workers: int) -> None:
        super().__init__()
        self.curve_workers = curve_workers

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lrtrain import rundir

        try:
            self.check_job_dirs(job_overrides, initial_job_idx)
            return self._launch(job_overrides, initial_job_idx)
        finally:
            self.hydra_context.config_loader.forget()
            rundir.release_all()  # the jobs' dirs, claimed as each was built (prepare)

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, fused where they can be")
        curves = self._curves_pool(len(job_overrides))
        try:
            return self._run_jobs(job_overrides, initial_job_idx, curves)
        finally:
            if curves is not None:
                curves.close()

    def _curves_pool(self, jobs: int) -> Any:
        """Worker processes for the fused jobs' curves.png (lrtrain.plots.CurvesPool), started now, while the jobs
        are composed and built (one busy core); None when no fused job would draw one."""
        logger = self.config.logger
        draws = "csv" in logger and logger.csv.get("plots") and "mlflow" not in logger
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if jobs < 2 or not draws or self.curve_workers < 1 or cores < 2:
            return None
        import multiprocessing

        if "forkserver" not in multiprocessing.get_all_start_methods():
            return None
        from lrtrain.plots import CurvesPool

        return CurvesPool(self.curve_workers)

    def _run_jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                  curves: Any) -> list[JobReturn]:
        returns: list[JobReturn] = []
        prepared: list[Prepared] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            if sweep_config.trainer.strategy == "ddp":
                from lrtrain.errors import ConfigValueError

                raise ConfigValueError("trainer.strategy", "ddp", "single with hydra/launcher=fused (ddp spreads "
                                                                  "one job over several processes; fused trains "
                                                                  "several jobs in one)")
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            box = Prepared()
            returns.append(run_job(hydra_context=self.hydra_context, task_function=lambda cfg: prepare(cfg, box),
                                   config=sweep_config, job_dir_key="hydra.sweep.dir",
                                   job_subdir_key="hydra.sweep.subdir"))
            prepared.append(box)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        train_groups(returns, prepared, curves)
        return returns


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
    from lrtrain.fused import unfusable

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
    from lrtrain.fused import fit_fused, group_key

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
