"""Typed schemas behind the YAML configs.

Every option file in `configs/<group>/` names one of these dataclasses in its defaults list, so Hydra checks
keys and types while it composes. Ranges are checked in `__post_init__`, which runs when `validate` turns the
composed config into objects, before anything is built. The values themselves live in the YAML files only:
the fields here are `MISSING` unless the field is a switch that is off unless a file turns it on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lrtrain.durations import parse_duration


class ConfigValueError(ValueError):
    """A value outside its valid range; `key` is relative to the schema that raised it."""

    def __init__(self, key: str, value: Any, valid: str):
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"{key}={value!r}: must be {valid}")

    def under(self, prefix: str) -> "ConfigValueError":
        return ConfigValueError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.valid)


def check(key: str, value: Any, ok: bool, valid: str) -> None:
    if not ok:
        raise ConfigValueError(key, value, valid)


def check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            check(name, value, value > 0, "> 0")


def is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)


def check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    check(name, value, value in choices, "one of " + ", ".join(choices))


def check_duration(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        try:
            parse_duration(value)
        except ValueError as e:
            raise ConfigValueError(name, value, str(e)) from None


# ---------------------------------------------------------------------------------------------- optimizer


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    lr: Any = MISSING  # a number, or "auto": run the LR range test first and train with its suggestion

    def __post_init__(self) -> None:
        check("lr", self.lr, self.lr == "auto" or is_positive_number(self.lr), "a finite number > 0, or auto")


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = MISSING
    dampening: float = MISSING
    nesterov: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")
        check("dampening", self.dampening, 0 <= self.dampening <= 1, "in [0, 1]")
        check("nesterov", self.nesterov, not self.nesterov or (self.momentum > 0 and self.dampening == 0),
              "false unless momentum > 0 and dampening = 0")


@dataclass
class AdamConfig(OptimizerConfig):
    betas: list[float] = MISSING
    eps: float = MISSING
    amsgrad: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("betas", self.betas, len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
              "two numbers in [0, 1)")
        check_positive(self, "eps")


# ---------------------------------------------------------------------------------------------- schedules


@dataclass
class ScheduleConfig:
    _target_: str = MISSING
    interval: str = MISSING

    def __post_init__(self) -> None:
        check_choice(self, "interval", ("step", "epoch"))


@dataclass
class StepScheduleConfig(ScheduleConfig):
    step_size: Any = MISSING
    gamma: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_duration(self, "step_size")
        check_positive(self, "gamma")


@dataclass
class CosineScheduleConfig(ScheduleConfig):
    T_max: Any = None
    eta_min: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_duration(self, "T_max")
        check("eta_min", self.eta_min, self.eta_min >= 0, ">= 0")


@dataclass
class WarmupConfig:
    _target_: Optional[str] = None
    length: Any = None
    start_factor: float = MISSING

    def __post_init__(self) -> None:
        check_duration(self, "length")
        check("start_factor", self.start_factor, 0 <= self.start_factor <= 1, "in [0, 1]")


# ----------------------------------------------------------------------------------------- regularization


@dataclass
class L2Config:
    weight_decay: float = MISSING
    decay_1d: bool = MISSING  # also decay biases and norm parameters (1-D tensors)

    def __post_init__(self) -> None:
        check("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")


@dataclass
class RegularizationConfig:
    """Each option of the multi-select `regularization` group fills one field; an unset field is off."""

    l2: Optional[L2Config] = None


# ----------------------------------------------------------------------------------------- early stopping


@dataclass
class EarlyStoppingConfig:
    _target_: Optional[str] = None
    monitor: str = MISSING
    mode: str = MISSING
    patience: int = MISSING
    min_delta: float = MISSING

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("min", "max"))
        check("patience", self.patience, self.patience >= 0, ">= 0")
        check("min_delta", self.min_delta, self.min_delta >= 0, ">= 0")


@dataclass
class NoEarlyStoppingConfig:
    _target_: Optional[str] = None


# --------------------------------------------------------------------------------------------- data, model


@dataclass
class DatasetConfig:
    _target_: str = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    val_fraction: float = MISSING
    split_seed: int = MISSING

    def __post_init__(self) -> None:
        check_positive(self, "batch_size", "eval_batch_size")
        check("val_fraction", self.val_fraction, 0 < self.val_fraction < 1, "in (0, 1)")


@dataclass
class TorchvisionDatasetConfig(DatasetConfig):
    root: str = MISSING
    download: bool = MISSING


@dataclass
class MLPConfig:
    _target_: str = MISSING
    hidden: list[int] = MISSING

    def __post_init__(self) -> None:
        check("hidden", self.hidden, all(h > 0 for h in self.hidden), "a list of sizes > 0")


# ------------------------------------------------------------------------------------------------ trainer


@dataclass
class TrainerConfig:
    max_epochs: int = MISSING
    max_steps: Optional[int] = None
    device: str = MISSING
    precision: str = MISSING
    seed: int = MISSING
    num_threads: Optional[int] = None
    monitor: str = MISSING
    mode: str = MISSING
    log_every_n_steps: int = MISSING
    progress: str = MISSING
    tensorboard: bool = MISSING
    plots: bool = MISSING

    def __post_init__(self) -> None:
        check("max_epochs", self.max_epochs, self.max_epochs >= 1, ">= 1")
        check_positive(self, "max_steps", "num_threads", "log_every_n_steps")
        check_choice(self, "device", ("auto", "cpu", "cuda", "mps"))
        check_choice(self, "precision", ("32", "bf16"))
        check_choice(self, "mode", ("min", "max"))
        check_choice(self, "progress", ("auto", "rich", "plain", "none"))


# ------------------------------------------------------------------------------------------ LR range test


@dataclass
class LRFindConfig:
    _target_: str = MISSING
    min_lr: float = MISSING
    max_lr: float = MISSING
    num_steps: int = MISSING
    beta: float = MISSING  # smoothing of the loss (exponential moving average)
    diverge_factor: float = MISSING  # stop when the smoothed loss exceeds this many times its best

    def __post_init__(self) -> None:
        check_positive(self, "min_lr")
        check("max_lr", self.max_lr, self.max_lr > self.min_lr, f"> lr_find.min_lr ({self.min_lr})")
        check("num_steps", self.num_steps, self.num_steps >= 2, ">= 2")
        check("beta", self.beta, 0 <= self.beta < 1, "in [0, 1)")
        check("diverge_factor", self.diverge_factor, self.diverge_factor > 1, "> 1")


@dataclass
class Config:
    mode: str = MISSING  # train | lr_find
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    warmup: Any = MISSING
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    early_stopping: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    trainer: TrainerConfig = MISSING
    lr_find: Any = MISSING

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("train", "lr_find"))


SCHEMAS = {
    "schema_config": Config,
    "schema_optimizer": OptimizerConfig,
    "schema_optimizer_sgd": SGDConfig,
    "schema_optimizer_adam": AdamConfig,
    "schema_scheduler": ScheduleConfig,
    "schema_scheduler_step": StepScheduleConfig,
    "schema_scheduler_cosine": CosineScheduleConfig,
    "schema_warmup": WarmupConfig,
    "schema_early_stopping": EarlyStoppingConfig,
    "schema_early_stopping_none": NoEarlyStoppingConfig,
    "schema_dataset": DatasetConfig,
    "schema_dataset_torchvision": TorchvisionDatasetConfig,
    "schema_model_mlp": MLPConfig,
    "schema_trainer": TrainerConfig,
    "schema_lr_find": LRFindConfig,
}


def register() -> None:
    """Store the schemas at the root of Hydra's ConfigStore (not as groups, so `--help` lists only options)."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)


def validate(cfg: DictConfig, prefix: str = "") -> None:
    """Run every schema's range checks, innermost first; raise ConfigValueError naming the full key."""
    for key in cfg:
        child = cfg[key]
        if isinstance(child, DictConfig):
            validate(child, f"{prefix}{key}.")
    if is_dataclass(OmegaConf.get_type(cfg)):  # the root too: it checks `mode`
        try:
            OmegaConf.to_object(cfg)
        except ConfigValueError as e:
            raise e.under(prefix[:-1]) from None


def schema_keys(obj: Any) -> list[str]:
    return [f.name for f in fields(obj)]
