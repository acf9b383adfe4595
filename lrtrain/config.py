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
    lr: float = MISSING

    def __post_init__(self) -> None:
        check("lr", self.lr, self.lr > 0 and math.isfinite(self.lr), "a finite number > 0")


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
class RegressionDatasetConfig(DatasetConfig):
    num_samples: int = MISSING  # training + validation rows
    num_test: int = MISSING
    num_features: int = MISSING
    noise: float = MISSING  # std of the Gaussian noise added to y
    seed: int = MISSING  # draws the data (split_seed draws the validation split)

    def __post_init__(self) -> None:
        super().__post_init__()
        check("num_samples", self.num_samples, self.num_samples >= 2, ">= 2")
        check("num_test", self.num_test, self.num_test >= 0, ">= 0")
        check_positive(self, "num_features")
        check("noise", self.noise, self.noise >= 0, ">= 0")


@dataclass
class FolderDatasetConfig(DatasetConfig):
    root: str = MISSING
    test_root: Optional[str] = None
    image_size: int = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    num_workers: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "image_size")
        check("num_workers", self.num_workers, self.num_workers >= 0, ">= 0")
        check("mean", self.mean, len(self.mean) == 3, "three numbers (R, G, B)")
        check("std", self.std, len(self.std) == 3 and all(s > 0 for s in self.std), "three numbers > 0")


@dataclass
class ModelConfig:
    _target_: str = MISSING


@dataclass
class MLPConfig(ModelConfig):
    hidden: list[int] = MISSING

    def __post_init__(self) -> None:
        check("hidden", self.hidden, all(h > 0 for h in self.hidden), "a list of sizes > 0")


@dataclass
class CNNConfig(ModelConfig):
    channels: list[int] = MISSING
    hidden: int = MISSING

    def __post_init__(self) -> None:
        check("channels", self.channels, len(self.channels) > 0 and all(c > 0 for c in self.channels),
              "a non-empty list of widths > 0")
        check_positive(self, "hidden")


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


@dataclass
class Config:
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    warmup: Any = MISSING
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    early_stopping: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    trainer: TrainerConfig = MISSING


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
    "schema_dataset_regression": RegressionDatasetConfig,
    "schema_dataset_folder": FolderDatasetConfig,
    "schema_model": ModelConfig,
    "schema_model_mlp": MLPConfig,
    "schema_model_cnn": CNNConfig,
    "schema_trainer": TrainerConfig,
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
    if prefix and is_dataclass(OmegaConf.get_type(cfg)):
        try:
            OmegaConf.to_object(cfg)
        except ConfigValueError as e:
            raise e.under(prefix[:-1]) from None


def schema_keys(obj: Any) -> list[str]:
    return [f.name for f in fields(obj)]
