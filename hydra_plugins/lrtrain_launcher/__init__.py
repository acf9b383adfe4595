"""lrtrain's default Hydra launcher: Hydra's basic launcher, composing each job once.

Hydra's sweepers compose every job of a batch to check it before launching any (a typo fails the sweep
before the first job trains), and the basic launcher then composes each job again: on a 2-core CPU that is
about 0.17 s per job, twice. This launcher hands the sweeper's config loader a memory of what it composed, and runs
each job with the config composed for its check; that check composes once per distinct set of config-group
choices (lrtrain.compose). Hydra finds it here (plugins live in `hydra_plugins`);
`hydra/launcher=lrtrain` selects it, as `configs/config.yaml` does by default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

# At most this many composed configs are kept (about 0.2 MB each); jobs past it are composed again.
REMEMBER = 256


class ComposedOnce:
    """A config loader that remembers each sweep config it composes and hands it out once more, to the
    next request for the same overrides. Everything else goes to the loader it wraps."""

    def __init__(self, loader: Any):
        from lrtrain.compose import SweepComposer

        self.loader = loader
        self.composer = SweepComposer(loader)
        self.composed: dict[tuple[str, ...], list[DictConfig]] = {}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = tuple(sweep_overrides)
        if self.composed.get(key):
            return self.composed[key].pop()
        cfg = self.composer.load_sweep_config(master_config, sweep_overrides)
        if sum(map(len, self.composed.values())) < REMEMBER:
            # the caller may change the config it gets (the launcher sets the job's number): keep a copy
            self.composed.setdefault(key, []).append(copy.deepcopy(cfg))
        return cfg

    def peek(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """The config `load_sweep_config` will hand out for these overrides, composed now and kept for it."""
        cfg = self.load_sweep_config(master_config, sweep_overrides)
        # at the front: the next peek at the same overrides (a job repeated in the batch) gets another copy
        self.composed.setdefault(tuple(sweep_overrides), []).insert(0, cfg)
        return cfg

    def forget(self) -> None:
        self.composed.clear()
        self.composer.forget()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class LrtrainLauncher(BasicLauncher):
    """Runs the jobs one after another in this process, as Hydra's basic launcher does."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # The sweeper holds this same context: it checks each batch through the wrapped loader.
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
