"""lrtrain's Hydra sweeper: an Optuna search on Optuna's ask-and-tell API, with persistent studies and pruning.

Hydra finds it here (plugins live in `hydra_plugins`) and `hydra/sweeper=optuna` (configs/hydra/sweeper/optuna.yaml,
selected by `hparams_search=optuna`) names it. It stays a thin shell: Hydra imports every plugin module at each
start, so Optuna is imported only when a search runs, and the search itself is lrtrain/sweep/search.py.
"""

from __future__ import annotations

from typing import Any, List, Optional

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class OptunaSweeper(Sweeper):
    """Settings: `hydra.sweeper.*`, typed by OptunaSweeperConfig (lrtrain/config.py)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create(settings)
        self.config: Optional[DictConfig] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from lrtrain.config import validate_settings

        validate_settings(config.hydra.sweeper, "hydra.sweeper.")
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: List[str]) -> None:
        from lrtrain.sweep.search import Search

        assert self.config is not None, "setup() first"
        Search(self.settings, self.config, self.hydra_context, self.launcher).run(arguments)
