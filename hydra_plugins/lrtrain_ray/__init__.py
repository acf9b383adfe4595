"""lrtrain's Ray Tune sweeper: a search on Ray Tune's `Tuner` (random or Optuna's TPE; FIFO, ASHA or PBT), each
trial an ordinary lrtrain job of the sweep.

`hydra/sweeper=ray_tune` (configs/hydra/sweeper/ray_tune.yaml, selected by `hparams_search=ray_asha` or `pbt`) names
it. A thin shell, as the Optuna one: Hydra imports every plugin at each start, so Ray is imported only when a search
runs; the search is lrtrain/sweep/ray_tune.py.
"""

from __future__ import annotations

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class RayTuneSweeper(Sweeper):
    """Settings: `hydra.sweeper.*`, typed by lrtrain.config.RayTuneConfig."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create(settings)
        self.config: Optional[DictConfig] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from lrtrain.config import validate_settings

        validate_settings(config.hydra.sweeper, "hydra.sweeper.")
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def sweep(self, arguments: List[str]) -> None:
        from lrtrain.sweep.ray_tune import RaySearch

        assert self.config is not None, "setup() first"
        RaySearch(self.settings, self.config, self.hydra_context, self.task_function).run(arguments)
