"""lrtrain's default Hydra launcher: Hydra's basic launcher, composing each job once.

Hydra's sweepers compose every job of a batch to check it before launching any (a typo fails the sweep
before the first job trains), and the basic launcher then composes each job again: on a 2-core CPU that is
about 0.17 s per job, twice. This launcher hands the sweeper's config loader a memory of what it composed, and runs
each job with the config composed for its check; that check composes once per distinct set of config-group
choices (lrtrain.sweep.compose). Hydra finds it here (plugins live in `hydra_plugins`);
`hydra/launcher=lrtrain` selects it, as `configs/config.yaml` does by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict


class LrtrainLauncher(BasicLauncher):
    """Runs the jobs one after another in this process, as Hydra's basic launcher does. Its settings,
    `hydra.launcher.*`, are typed by its schema in lrtrain/config.py and checked in `setup`."""

    def __init__(self, **settings: Any) -> None:  # any keys: `setup` names one its schema lacks in one line
        super().__init__()
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # The sweeper holds this same context: it checks each batch through the wrapped loader.
        from lrtrain.config import validate_settings
        from lrtrain.sweep.compose import ComposedOnce

        validate_settings(config.hydra.launcher, "hydra.launcher.")
        if not isinstance(hydra_context.config_loader, ComposedOnce):
            hydra_context.config_loader = ComposedOnce(hydra_context.config_loader)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            self.check_job_dirs(job_overrides, initial_job_idx)
            return super().launch(job_overrides, initial_job_idx)
        finally:
            self.hydra_context.config_loader.forget()  # configs checked for this batch, run or not

    def check_job_dirs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
        """Apply the job-dir rule (lrtrain.rundir.job_state) to every job of the batch before any trains: a
        dir holding another configuration's run stops the sweep here, not after the jobs before it."""
        from lrtrain.rundir import check_jobs

        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.peek(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = cfg.hydra.job.num = idx
            check_jobs([(Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir), cfg)])
