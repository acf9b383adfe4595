"""build(cfg): the one place that reads the config and turns it into plain objects for the loop."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lrtrain.config import ConfigValueError
from lrtrain.data import DataError
from lrtrain.durations import Timeline
from lrtrain.loop import Run, seed_everything
from lrtrain.models import ModelInputError
from lrtrain.optimizers import param_groups


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        valid = ", ".join(["auto"] + [k for k, ok in available.items() if ok])
        raise ConfigValueError("trainer.device", name, f"a device this machine has ({valid})")
    return torch.device(name)


def build(cfg: DictConfig, out_dir: Path) -> Run:
    trainer = cfg.trainer
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    device = resolve_device(trainer.device)
    seed_everything(trainer.seed)

    try:
        data = instantiate(cfg.dataset, _convert_="all").to(device)
    except InstantiationException as e:
        if isinstance(e.__cause__, DataError):  # its own one-line message names the root and the files
            raise e.__cause__ from None
        raise
    steps_per_epoch = math.ceil(len(data.train) / data.batch_size)
    # max_steps, when set, is the run's length; otherwise max_epochs is.
    total_steps = trainer.max_steps or trainer.max_epochs * steps_per_epoch
    timeline = Timeline(steps_per_epoch, total_steps)

    classify = data.num_classes is not None
    metrics = ["train_loss", "val_loss"] + (["train_acc", "val_acc"] if classify else [])
    if trainer.monitor not in metrics:
        raise ConfigValueError("trainer.monitor", trainer.monitor, "one of " + ", ".join(metrics))

    reg = cfg.regularization
    try:
        model = instantiate(cfg.model, input_shape=data.input_shape, num_outputs=data.num_classes or 1,
                            _convert_="all").to(device)
    except InstantiationException as e:
        if isinstance(e.__cause__, ModelInputError):  # e.g. model=cnn on dataset=regression
            raise ConfigValueError("model", cfg.model._target_.rsplit(".", 1)[-1].lower(),
                                   f"a model for {data.name}'s inputs: {e.__cause__}") from None
        raise
    weight_decay = reg.l2.weight_decay if reg.l2 is not None else 0.0
    groups = param_groups(model, weight_decay, decay_1d=reg.l2.decay_1d if reg.l2 is not None else False)
    # Config nodes become partials completed with live objects, so Hydra never converts those objects.
    optimizer = instantiate(cfg.optimizer, _partial_=True, _convert_="all")(groups)
    loss_fn: nn.Module = nn.CrossEntropyLoss() if classify else nn.MSELoss()

    warmup_steps = timeline.steps(cfg.warmup.length) if cfg.warmup._target_ else 0
    if warmup_steps >= total_steps:
        raise ConfigValueError("warmup.length", cfg.warmup.length, f"shorter than the run ({total_steps} steps)")
    schedule = instantiate(cfg.scheduler, _partial_=True, _convert_="all")(
        timeline=Timeline(steps_per_epoch, total_steps - warmup_steps))
    if warmup_steps:
        schedule = instantiate(cfg.warmup, _partial_=True)(schedule=schedule, length=warmup_steps)

    early_stopping = instantiate(cfg.early_stopping) if cfg.early_stopping._target_ else None
    return Run(
        model=model, optimizer=optimizer, schedule=schedule, data=data, loss_fn=loss_fn, device=device,
        timeline=timeline, seed=trainer.seed, monitor=trainer.monitor,
        mode=trainer.mode, out_dir=out_dir, early_stopping=early_stopping, precision=trainer.precision,
        log_every_n_steps=trainer.log_every_n_steps, progress=trainer.progress,
        tensorboard=trainer.tensorboard, plots=trainer.plots,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
