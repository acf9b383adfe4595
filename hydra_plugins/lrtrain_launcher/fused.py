"""`hydra/launcher=fused`: the jobs of a batch that share a model and its data train together (lrtrain.sweep.fused).

Each job goes through Hydra's `run_job` as under the default launcher (its dir, `.hydra/`, its log, the
callbacks), with a task that builds the job's run (`lrtrain.build.build`, as `lrtrain.cli` does) and keeps
it. Jobs that cannot fuse (another optimizer, dropout, mode=lr_find, ...) train right there, alone, as the default
launcher would. The kept runs are then grouped (`lrtrain.sweep.fused.group_key`: model, data set and split, batch
size, device, precision); each group of two or more trains fused, a group of one alone. Each job's return
value is then what `lrtrain.cli.train` returns for it, for sweepers. This module is Hydra's shell; the work on
each job is lrtrain/sweep/launch.py.

Running the same sweep again into the same `hydra.sweep.dir` resumes it, by the rule every launcher follows
(lrtrain.rundir.job_state): a job whose dir holds a finished run of its configuration is not trained again (its
value is read back), one of its configuration unfinished (killed, interrupted) resumes from its `last.pt` in
place, and a dir holding another configuration's run stops the sweep before any job trains.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import open_dict

from hydra_plugins.lrtrain_launcher import LrtrainLauncher

log = logging.getLogger(__name__)


class FusedLauncher(LrtrainLauncher):
    """Builds every job of a batch, then trains each group of compatible jobs as one vectorized model."""

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
        if jobs < 2 or not draws or self.settings["curve_workers"] < 1 or cores < 2:
            return None
        import multiprocessing

        if "forkserver" not in multiprocessing.get_all_start_methods():
            return None
        from lrtrain.plots import CurvesPool

        return CurvesPool(self.settings["curve_workers"])

    def _run_jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                  curves: Any) -> list[JobReturn]:
        from lrtrain.sweep.launch import Prepared, prepare, train_groups

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
