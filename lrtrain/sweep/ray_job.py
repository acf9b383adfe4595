"""`python -m lrtrain.sweep.ray_job`: one job of a Ray Tune search, in a process of its own.

A trial (lrtrain.sweep.ray_tune) starts it and writes to its stdin what Hydra's joblib launcher hands its workers
(Hydra's state, context, sweep config, task function, the job's overrides and number); the job runs with Hydra's
`run_job`, in the process's main thread, so lrtrain's signal handling and the run-dir rules are a sweep job's.
"""

from __future__ import annotations

import pickle
import sys


def main() -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import open_dict

    from lrtrain.config import register
    from lrtrain.signals import STOP

    STOP.install()
    state, hydra_context, config, task_function, overrides, num = pickle.load(sys.stdin.buffer)
    setup_globals()
    Singleton.set_state(state)
    register()  # the resolvers the configs use (the schemas came with Hydra's state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{num}"
        sweep_config.hydra.job.num = num
    HydraConfig.instance().set_config(sweep_config)
    run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function,
            job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


if __name__ == "__main__":
    main()
