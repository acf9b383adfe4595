"""build(cfg): the one place that reads the config and turns it into plain objects for the loop."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lrtrain.config import ConfigValueError
from lrtrain.durations import Timeline
from lrtrain.loop import Run, seed_everything
from lrtrain.optimizers import make_optimizer, param_groups
from lrtrain.regularization import BatchAugment, GradClip, L1Penalty, Regularizer


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

    data = instantiate(cfg.dataset, _convert_="all").to(device)
    steps_per_epoch = math.ceil(len(data.train) / data.batch_size)
    # max_steps, when set, is the run's length; otherwise max_epochs is.
    total_steps = trainer.max_steps or trainer.max_epochs * steps_per_epoch
    timeline = Timeline(steps_per_epoch, total_steps)

    classify = data.num_classes is not None
    metrics = ["train_loss", "val_loss"] + (["train_acc", "val_acc"] if classify else [])
    if trainer.monitor not in metrics:
        raise ConfigValueError("trainer.monitor", trainer.monitor, "one of " + ", ".join(metrics))

    reg = cfg.regularization
    model_kwargs = {"dropout": reg.dropout.p} if reg.dropout is not None else {}
    if model_kwargs and "dropout" not in inspect.signature(get_object(cfg.model._target_)).parameters:
        raise ConfigValueError("regularization", "dropout", f"a list without dropout: {cfg.model._target_} "
                                                           "has no dropout")
    model = instantiate(cfg.model, input_shape=data.input_shape, num_outputs=data.num_classes or 1,
                        **model_kwargs, _convert_="all").to(device)
    weight_decay = reg.l2.weight_decay if reg.l2 is not None else 0.0
    groups = param_groups(model, weight_decay, decay_1d=reg.l2.decay_1d if reg.l2 is not None else False)
    # Config nodes become partials completed with live objects, so Hydra never converts those objects.
    optimizer = make_optimizer(instantiate(cfg.optimizer, _partial_=True, _convert_="all"), groups,
                               decoupled=reg.l2 is not None and reg.l2.decoupled)
    if reg.label_smoothing is not None and not classify:
        raise ConfigValueError("regularization", "label_smoothing",
                               f"a list without label_smoothing: {data.name} is a regression data set")
    loss_fn: nn.Module = (nn.CrossEntropyLoss(label_smoothing=reg.label_smoothing.epsilon if
                                              reg.label_smoothing is not None else 0.0)
                          if classify else nn.MSELoss())
    regularizer = _regularizer(reg, model, data)

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
        tensorboard=trainer.tensorboard, plots=trainer.plots, regularizer=regularizer,
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def _regularizer(reg: DictConfig, model: nn.Module, data) -> Regularizer:
    """The in-step regularization hooks; each is None when its option is off."""
    params = [p for p in model.parameters() if p.requires_grad]
    augment = None
    if reg.augment is not None:
        if data.image_kind is None:
            raise ConfigValueError("regularization", "augment",
                                   f"a list without augment: {data.name} is not an image data set")
        augment = BatchAugment(data.image_kind, data.input_shape, reg.augment.max_shift, reg.augment.flip,
                               reg.augment.rotation)
    return Regularizer(
        augment=augment,
        penalty=L1Penalty(params, reg.l1.coefficient) if reg.l1 is not None else None,
        clip=GradClip(params, reg.grad_clip.max_norm, reg.grad_clip.value) if reg.grad_clip is not None else None,
    )
