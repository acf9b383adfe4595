"""A sweep job's link to its Optuna trial: report the monitored value at every validation point (every epoch
unless `trainer.val_every` says otherwise), stop when the pruner says so.

lrtrain's Optuna sweeper (lrtrain/sweep/search.py) hands each job of a pruned study its trial through one environment
variable, set with Hydra's `hydra.job.env_set` (so it reaches the job in any launcher's process, and shows only
in the job's `.hydra/hydra.yaml`). A run without it, e.g. a solo `lrtrain`, never touches Optuna.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

ENV = "LRTRAIN_OPTUNA_TRIAL"
SQLITE_HEADER = b"SQLite format 3\x00"


def open_storage(url: str, heartbeat_interval: Optional[int] = None) -> Any:
    """An Optuna storage from the one string users give: an RDB URL (sqlite:///, postgresql://, ...) or
    the path of a journal file (several machines on a shared file system)."""
    import optuna

    if "://" in url:
        if url.startswith("sqlite:"):
            # several workers on one file: wait for the lock rather than fail after SQLite's 5 s default
            kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}}}
        else:
            kwargs = {"engine_kwargs": {"pool_pre_ping": True}}
        if heartbeat_interval:
            kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=2 * heartbeat_interval)
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _rdb_storage(url, kwargs)
    path = Path(url).expanduser()
    if path.is_file():
        with path.open("rb") as f:
            if f.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
                raise ValueError(f"{url} is an SQLite file; give it as sqlite:///{path.resolve()}")
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _rdb_storage(url: str, kwargs: dict[str, Any], attempts: int = 5) -> Any:
    """Workers started together on a new database race to create its tables; the losers find them made."""
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (OperationalError, IntegrityError) as e:
            if attempt == attempts - 1 or not any(s in str(e) for s in ("already exists", "UNIQUE constraint")):
                raise
            time.sleep(0.2 * (attempt + 1))


@dataclass(frozen=True)
class TrialLink:
    """Where a job's trial lives, and the pruner its study uses (pruners are not stored with the study)."""

    storage: str
    study_name: str
    trial_id: int
    number: int
    pruner: dict[str, Any]  # a Hydra `_target_` node: the sweeper's hydra.sweeper.pruner

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> Optional["TrialLink"]:
        text = os.environ.get(ENV)
        return cls(**json.loads(text)) if text else None

    def connect(self, monitor: str, validations: int, per_epoch: bool = True) -> "TrialPruning":
        import optuna
        from hydra.utils import instantiate

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # the sampler is never asked here; a random one costs nothing to set up
        study = optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage),
                                  sampler=optuna.samplers.RandomSampler(), pruner=instantiate(self.pruner))
        return TrialPruning(optuna.trial.Trial(study, self.trial_id), monitor, validations, per_epoch)


class TrialPruning:
    """The loop's view of a trial: `update` at every validation point (the trial's step: its index, the epoch when
    validating once an epoch); a returned reason means stop now, as `pruned`."""

    def __init__(self, trial: Any, monitor: str, epochs: int, per_epoch: bool = True):
        # epochs: the run's validation points (its epochs unless `per_epoch` is false)
        self.trial, self.monitor, self.epochs, self.per_epoch = trial, monitor, epochs, per_epoch
        self.reported: set[int] = set()

    def update(self, index: int, row: dict[str, Any]) -> Optional[str]:
        value = row[self.monitor]
        if not math.isfinite(value):
            return None  # divergence is the loop's to handle; Optuna refuses NaN intermediate values
        if index not in self.reported:  # a validation made again after a rollback keeps its first report
            self.trial.report(value, step=index)
            self.reported.add(index)
        # after the last validation the trial is complete: nothing is saved by calling it pruned
        if index + 1 < self.epochs and self.trial.should_prune():
            pruner = type(self.trial.study.pruner).__name__
            where = f"epoch {index + 1}" if self.per_epoch else f"step {row['step']}"
            return f"pruned by Optuna's {pruner} after {where}: {self.monitor}={value:.4g}"
        return None
