"""`Run`: everything a training run is made of, as `lrtrain.build` makes it from the config; the loop
(lrtrain.loop), a fused group (lrtrain.sweep.fused) and the LR range test take it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lrtrain.averaging import Averager
from lrtrain.config import TrainerConfig
from lrtrain.data import FolderData, TensorData, TextData
from lrtrain.distributed import Dist
from lrtrain.durations import Timeline, parse_duration
from lrtrain.early_stopping import EarlyStopping
from lrtrain.loggers import Sink
from lrtrain.sweep.pruning import TrialPruning
from lrtrain.regularization import StepHooks
from lrtrain.schedules import Schedule
from lrtrain.step import TrainStep
from lrtrain.tasks import Task
from lrtrain.warmup import Warmup


@dataclass
class Run:
    """Everything `fit` needs: the objects `lrtrain.build` made from the config, and the trainer's settings."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule | Warmup  # lr(step, base_lr), observe(epoch, metrics), state_dict()
    data: TensorData | FolderData | TextData  # a batch source: train_batches(generator, start), eval_batches(split)
    task: Task  # the loss and correct predictions of the model's outputs
    hooks: StepHooks  # what regularization adds to the step
    stopper: EarlyStopping  # early stopping and the divergence guard
    sinks: list[Sink]  # outputs; empty on ranks > 0
    settings: TrainerConfig  # trainer.*, validated
    device: torch.device
    timeline: Timeline
    out_dir: Path
    config: dict[str, Any]  # the resolved config, saved in every checkpoint
    resume: Optional[dict[str, Any]] = None  # a loaded checkpoint to continue from
    resumed_in_place: bool = False  # the checkpoint is this run dir's own: its CSVs continue from it
    dist: Optional[Dist] = None  # trainer.strategy=ddp: this process's rank among the job's processes
    lr_find: Optional[dict[str, Any]] = None  # the LR range test's result, when one ran before training
    sweep_dir: Optional[Path] = None  # when the run is a job of a sweep: the sweep's dir and the job's number
    job_num: Optional[int] = None
    pruning: Optional[TrialPruning] = None  # a pruned Optuna study's job, a Ray Tune trial's: update(index, row) -> stop?
    save_at: frozenset[int] = frozenset()  # trainer.save_at in steps: checkpoints/step_<N>.pt, kept for good
    fork: Optional[dict[str, Any]] = None  # a cooldown fork's lineage (lrtrain.forks), for summary.json
    averaging: Optional[Averager] = None  # averaging=ema|swa: the averaged weights beside run.model
    pbt: Optional[Any] = None  # a job of a Ray Tune PBT trial: lrtrain.sweep.ray_tune.PBTState

    def step_fn(self, model: Optional[nn.Module] = None) -> TrainStep:
        """The training step over `model` (default: the run's model)."""
        return TrainStep(model or self.model, self.optimizer, self.task, self.data, self.hooks,
                         self.settings.precision, self.device, compile=self.settings.compile)

    def loop_step(self) -> TrainStep:
        """The loop's training step: under ddp over a DistributedDataParallel wrapper of the model, while
        checkpoints hold `model`, the unwrapped one, so that they load with and without ddp."""
        if self.dist is None:
            return self.step_fn()
        ids = [self.device] if self.device.type == "cuda" else None
        return self.step_fn(nn.parallel.DistributedDataParallel(self.model, device_ids=ids))

    @property
    def val_steps(self) -> int:
        """Steps between validation points (`trainer.val_every`); the run's last step is one too."""
        return self.timeline.every(self.settings.val_every)

    @property
    def val_epochs(self) -> Optional[int]:
        """With `trainer.val_every` in whole epochs (the default, 1ep): validate every this many epochs, at epoch
        ends, also when a resume (e.g. of a ddp run by one process) made them fall between multiples of
        val_steps. None: every val_steps steps."""
        every = parse_duration(self.settings.val_every)
        return int(every.amount) if every.unit == "ep" and every.amount.is_integer() else None

    @property
    def world_size(self) -> int:
        return self.dist.world_size if self.dist else 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run's checkpoints (rank 0 alone, under ddp)."""
        return self.dist is None or self.dist.main
