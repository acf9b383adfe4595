"""Typed schemas behind the YAML configs.

Every option file in `configs/<group>/` names one of these dataclasses by its class name in its defaults list
(`- /AdamConfig@_here_`: `register` stores each under its name), so Hydra checks keys and types while it
composes. Ranges are checked in `__post_init__`, which runs when `validate` turns the composed config into
objects, before anything is built. The values themselves live in the YAML files only: the fields here are
`MISSING` unless the field is a switch that is off unless a file turns it on.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lrtrain.durations import parse_duration
from lrtrain.errors import ConfigValueError


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


def check_seed(obj: Any, *names: str) -> None:
    """A seed torch can take (torch.manual_seed's range)."""
    for name in names:
        value = getattr(obj, name)
        check(name, value, -2**63 <= value < 2**64, "an integer in [-2**63, 2**64 - 1] (torch's seed range)")


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


def check_betas(obj: Any, name: str = "betas") -> None:
    betas = getattr(obj, name)
    check(name, betas, len(betas) == 2 and all(0 <= b < 1 for b in betas), "two numbers in [0, 1)")


@dataclass
class AdamLikeConfig(OptimizerConfig):
    """The keys of every Adam-style optimizer (radam and adamax have no others)."""

    betas: list[float] = MISSING
    eps: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_betas(self)
        check_positive(self, "eps")


@dataclass
class AdamConfig(AdamLikeConfig):
    amsgrad: bool = MISSING


@dataclass
class NAdamConfig(AdamLikeConfig):
    momentum_decay: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("momentum_decay", self.momentum_decay, self.momentum_decay >= 0, ">= 0")


@dataclass
class RMSpropConfig(OptimizerConfig):
    alpha: float = MISSING
    eps: float = MISSING
    momentum: float = MISSING
    centered: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("alpha", self.alpha, 0 <= self.alpha < 1, "in [0, 1)")
        check_positive(self, "eps")
        check("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")


@dataclass
class AdagradConfig(OptimizerConfig):
    lr_decay: float = MISSING
    initial_accumulator_value: float = MISSING
    eps: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("lr_decay", self.lr_decay, self.lr_decay >= 0, ">= 0")
        check("initial_accumulator_value", self.initial_accumulator_value, self.initial_accumulator_value >= 0,
              ">= 0")
        check_positive(self, "eps")


@dataclass
class AdadeltaConfig(OptimizerConfig):
    rho: float = MISSING
    eps: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("rho", self.rho, 0 <= self.rho < 1, "in [0, 1)")
        check_positive(self, "eps")


@dataclass
class AdafactorConfig(OptimizerConfig):
    beta2_decay: float = MISSING  # the second-moment decay is 1 - step ** beta2_decay
    eps: list[Optional[float]] = MISSING  # [eps1 (null: the dtype's eps), eps2]
    d: float = MISSING  # clipping threshold of the update's RMS

    def __post_init__(self) -> None:
        super().__post_init__()
        check("beta2_decay", self.beta2_decay, self.beta2_decay <= 0, "<= 0")
        check("eps", self.eps, len(self.eps) == 2 and all(e is None or e >= 0 for e in self.eps),
              "two numbers >= 0 (the first may be null)")
        check_positive(self, "d")


@dataclass
class LionConfig(OptimizerConfig):
    betas: list[float] = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("betas", self.betas, len(self.betas) == 2 and all(0 <= b <= 1 for b in self.betas),
              "two numbers in [0, 1]")


@dataclass
class ScheduleFreeAdamWConfig(OptimizerConfig):
    betas: list[float] = MISSING
    eps: float = MISSING
    r: float = MISSING  # polynomial weighting of the average: step ** r
    weight_lr_power: float = MISSING  # and lr_max ** weight_lr_power

    def __post_init__(self) -> None:
        super().__post_init__()
        check("betas", self.betas, len(self.betas) == 2 and 0 < self.betas[0] < 1 and 0 <= self.betas[1] < 1,
              "two numbers in [0, 1), the first > 0")
        check_positive(self, "eps")
        check("r", self.r, self.r >= 0, ">= 0")
        check("weight_lr_power", self.weight_lr_power, self.weight_lr_power >= 0, ">= 0")


@dataclass
class ScheduleFreeSGDConfig(OptimizerConfig):
    momentum: float = MISSING
    r: float = MISSING
    weight_lr_power: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("momentum", self.momentum, 0 < self.momentum < 1, "in (0, 1)")
        check("r", self.r, self.r >= 0, ">= 0")
        check("weight_lr_power", self.weight_lr_power, self.weight_lr_power >= 0, ">= 0")


@dataclass
class DAdaptAdamConfig(AdamLikeConfig):
    d0: float = MISSING  # the initial estimate of d
    growth_rate: float = field(default=MISSING, metadata={"inf": "no limit"})  # d grows by at most this factor a step
    use_bias_correction: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "d0")
        check("growth_rate", self.growth_rate, self.growth_rate >= 1, ">= 1 (.inf: no limit)")


@dataclass
class ProdigyConfig(DAdaptAdamConfig):
    beta3: Optional[float] = None  # null: sqrt(beta2)
    d_coef: float = MISSING  # scales the estimate of d
    safeguard_warmup: bool = MISSING  # leave the LR out of the denominator during warmup

    def __post_init__(self) -> None:
        super().__post_init__()
        check("beta3", self.beta3, self.beta3 is None or 0 <= self.beta3 < 1, "in [0, 1), or null")
        check_positive(self, "d_coef")


@dataclass
class MuonConfig(OptimizerConfig):
    momentum: float = MISSING
    nesterov: bool = MISSING
    ns_coefficients: list[float] = MISSING  # Newton-Schulz quintic (a, b, c)
    ns_steps: int = MISSING
    eps: float = MISSING
    adjust_lr_fn: Optional[str] = None  # null (original) | match_rms_adamw | spectral_unclamped
    adamw_lr: Optional[float] = None  # the AdamW part's LR; null: lr
    adamw_betas: list[float] = MISSING
    adamw_eps: float = MISSING
    head_to_adamw: bool = MISSING  # the output layer's weight to AdamW (else to Muon with the other matrices)

    def __post_init__(self) -> None:
        super().__post_init__()
        check("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")
        check("ns_coefficients", self.ns_coefficients, len(self.ns_coefficients) == 3, "three numbers (a, b, c)")
        check("ns_steps", self.ns_steps, 1 <= self.ns_steps < 100, "an integer in [1, 100)")
        check_positive(self, "eps", "adamw_lr", "adamw_eps")
        check("adjust_lr_fn", self.adjust_lr_fn,
              self.adjust_lr_fn in (None, "original", "match_rms_adamw", "spectral_unclamped"),
              "null, original, match_rms_adamw or spectral_unclamped")
        check_betas(self, "adamw_betas")
        check("adamw_lr", self.adamw_lr, self.adamw_lr is None or self.lr != "auto",
              "null with lr=auto (the range test sets one LR for both parts)")



# The optimizer zoo (pytorch-optimizer): each schema holds the keys its YAML sets; weight decay comes from
# regularization=[l2] through lrtrain's parameter groups, and the decoupling switch from regularization.l2.decoupled.


def check_fraction(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        check(name, value, 0 <= value < 1, "in [0, 1)")


@dataclass
class SOAPConfig(AdamLikeConfig):
    shampoo_beta: Optional[float] = None  # the preconditioner's moving average; null: betas[1]
    precondition_frequency: int = MISSING  # steps between eigenbasis updates
    max_precondition_dim: int = MISSING  # larger dimensions are left unpreconditioned
    merge_dims: bool = MISSING
    precondition_1d: bool = MISSING
    normalize_gradient: bool = MISSING
    correct_bias: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("shampoo_beta", self.shampoo_beta, self.shampoo_beta is None or 0 <= self.shampoo_beta < 1,
              "in [0, 1), or null")
        check("precondition_frequency", self.precondition_frequency, self.precondition_frequency >= 1, ">= 1")
        check("max_precondition_dim", self.max_precondition_dim, self.max_precondition_dim >= 1, ">= 1")


@dataclass
class KronConfig(OptimizerConfig):
    momentum: float = MISSING
    pre_conditioner_update_probability: Optional[float] = None  # null: the package's schedule, 1 decaying to 0.03
    max_size_triangular: int = MISSING  # larger dimensions get a diagonal preconditioner
    min_ndim_triangular: int = MISSING
    momentum_into_precondition_update: bool = MISSING
    balance_prob: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self, "momentum")
        p = self.pre_conditioner_update_probability
        check("pre_conditioner_update_probability", p, p is None or 0 < p <= 1, "in (0, 1], or null")
        check("balance_prob", self.balance_prob, 0 <= self.balance_prob <= 1, "in [0, 1]")
        check_positive(self, "max_size_triangular", "min_ndim_triangular")


@dataclass
class ADOPTConfig(AdamLikeConfig):
    cautious: bool = MISSING  # mask the update's coordinates whose sign disagrees with the gradient (C-ADOPT)


@dataclass
class MARSConfig(OptimizerConfig):
    betas: list[float] = MISSING
    eps: float = MISSING
    gamma: float = MISSING  # the variance-reduction scale
    mars_type: str = MISSING  # adamw | lion | shampoo
    optimize_1d: bool = MISSING  # MARS for 1-D parameters too (else AdamW at lr * lr_1d / lr)
    lr_1d: float = MISSING
    betas_1d: list[float] = MISSING
    weight_decay_1d: float = MISSING
    cautious: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_betas(self)
        check_betas(self, "betas_1d")
        check_positive(self, "eps", "lr_1d")
        check("gamma", self.gamma, self.gamma >= 0, ">= 0")
        check_choice(self, "mars_type", ("adamw", "lion", "shampoo"))
        check("weight_decay_1d", self.weight_decay_1d, self.weight_decay_1d >= 0, ">= 0")


@dataclass
class AdEMAMixConfig(OptimizerConfig):
    betas: list[float] = MISSING  # [beta1, beta2, beta3]: beta3 averages the slow momentum
    eps: float = MISSING
    alpha: float = MISSING  # the slow momentum's weight
    t_alpha_beta3: Optional[float] = None  # steps over which alpha and beta3 warm up; null: none
    cautious: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("betas", self.betas, len(self.betas) == 3 and all(0 <= b < 1 for b in self.betas),
              "three numbers in [0, 1)")
        check_positive(self, "eps", "t_alpha_beta3")
        check("alpha", self.alpha, self.alpha >= 0, ">= 0")


@dataclass
class ShampooConfig(OptimizerConfig):
    momentum: float = MISSING
    preconditioning_compute_steps: int = MISSING  # steps between inverse-root computations
    matrix_eps: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self, "momentum")
        check_positive(self, "preconditioning_compute_steps", "matrix_eps")


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
class MultiStepScheduleConfig(ScheduleConfig):
    milestones: list[Any] = MISSING
    gamma: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("milestones", self.milestones, len(self.milestones) > 0, "a non-empty list of durations")
        for m in self.milestones:
            try:
                parse_duration(m)
            except ValueError as e:
                raise ConfigValueError("milestones", self.milestones, f"a list of durations ({e})") from None
        check_positive(self, "gamma")


@dataclass
class ExponentialScheduleConfig(ScheduleConfig):
    gamma: float = MISSING  # the factor per period
    period: Any = MISSING  # a duration
    staircase: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "gamma")
        check_duration(self, "period")  # at least one step: checked by the build, which knows the step count


@dataclass
class PolynomialScheduleConfig(ScheduleConfig):
    power: float = MISSING
    end_lr: float = MISSING
    total: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "power")
        check("end_lr", self.end_lr, self.end_lr >= 0, ">= 0")
        check_duration(self, "total")


@dataclass
class LinearScheduleConfig(ScheduleConfig):
    end_factor: float = MISSING
    total: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check("end_factor", self.end_factor, self.end_factor >= 0, ">= 0")
        check_duration(self, "total")


@dataclass
class CosineScheduleConfig(ScheduleConfig):
    T_max: Any = None
    eta_min: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_duration(self, "T_max")
        check("eta_min", self.eta_min, self.eta_min >= 0, ">= 0")


@dataclass
class CosineRestartsScheduleConfig(ScheduleConfig):
    T_0: Any = MISSING
    T_mult: int = MISSING
    eta_min: float = MISSING
    peak_decay: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_duration(self, "T_0")
        check("T_mult", self.T_mult, self.T_mult >= 1, "an integer >= 1")
        check("eta_min", self.eta_min, self.eta_min >= 0, ">= 0")
        check("peak_decay", self.peak_decay, 0 < self.peak_decay <= 1, "in (0, 1]")


@dataclass
class CyclicScheduleConfig(ScheduleConfig):
    base_lr: Optional[float] = None  # null: the optimizer's lr
    max_lr: float = MISSING
    step_size_up: Any = MISSING
    step_size_down: Any = None  # null: the same as step_size_up
    mode: str = MISSING
    gamma: float = MISSING
    cycle_momentum: bool = MISSING  # momentum (or beta1) between max_momentum and base_momentum, against the LR
    base_momentum: float = MISSING
    max_momentum: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "base_lr", "max_lr")
        check_duration(self, "step_size_up", "step_size_down")
        check_choice(self, "mode", ("triangular", "triangular2", "exp_range"))
        check("gamma", self.gamma, 0 < self.gamma <= 1, "in (0, 1]")
        check_momenta(self)


def check_momenta(obj: Any) -> None:
    check("base_momentum", obj.base_momentum, 0 <= obj.base_momentum < 1, "in [0, 1)")
    check("max_momentum", obj.max_momentum, obj.base_momentum <= obj.max_momentum < 1,
          f"in [base_momentum ({obj.base_momentum}), 1)")


@dataclass
class OneCycleScheduleConfig(ScheduleConfig):
    max_lr: Optional[float] = None  # null: the optimizer's lr
    pct_start: float = MISSING
    anneal_strategy: str = MISSING
    div_factor: float = MISSING
    final_div_factor: float = MISSING
    three_phase: bool = MISSING
    cycle_momentum: bool = MISSING
    base_momentum: float = MISSING
    max_momentum: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "max_lr", "div_factor", "final_div_factor")
        check("pct_start", self.pct_start, 0 < self.pct_start < (0.5 if self.three_phase else 1),
              "in (0, 0.5) with three_phase" if self.three_phase else "in (0, 1)")
        check_choice(self, "anneal_strategy", ("cos", "linear"))
        check_momenta(self)


@dataclass
class InverseSqrtScheduleConfig(ScheduleConfig):
    d_model: Optional[int] = None  # scale = d_model ** -0.5 (the Transformer paper)
    scale: Optional[float] = None  # null (and no d_model): sqrt(warmup steps), so the peak is the optimizer's lr

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "d_model", "scale")
        check("scale", self.scale, self.scale is None or self.d_model is None, "null when d_model is set")


@dataclass
class PlateauScheduleConfig(ScheduleConfig):
    monitor: str = MISSING
    mode: str = MISSING
    factor: float = MISSING
    patience: int = MISSING
    threshold: float = MISSING
    threshold_mode: str = MISSING
    cooldown: int = MISSING
    min_lr: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "mode", ("min", "max"))
        check("factor", self.factor, 0 < self.factor < 1, "in (0, 1)")
        check("patience", self.patience, self.patience >= 0, ">= 0")
        check("threshold", self.threshold, self.threshold >= 0, ">= 0")
        check_choice(self, "threshold_mode", ("rel", "abs"))
        check("cooldown", self.cooldown, self.cooldown >= 0, ">= 0")
        check("min_lr", self.min_lr, self.min_lr >= 0, ">= 0")


@dataclass
class WSDScheduleConfig(ScheduleConfig):
    decay_fraction: float = MISSING
    decay_type: str = MISSING
    min_lr: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("decay_fraction", self.decay_fraction, 0 < self.decay_fraction <= 1, "in (0, 1]")
        check_choice(self, "decay_type", ("linear", "cosine", "1-sqrt"))
        check("min_lr", self.min_lr, self.min_lr >= 0, ">= 0")


@dataclass
class WarmupConfig:
    _target_: Optional[str] = None
    length: Any = None
    start_factor: float = MISSING

    def __post_init__(self) -> None:
        check_duration(self, "length")
        check("start_factor", self.start_factor, 0 <= self.start_factor <= 1, "in [0, 1]")


@dataclass
class LinearWarmupConfig(WarmupConfig):
    offset: int = MISSING  # 0: step 0 at start_factor (torch's LinearLR); 1: the ramp counts the step taken (nanoGPT)

    def __post_init__(self) -> None:
        super().__post_init__()
        check("offset", self.offset, self.offset >= 0, "an integer >= 0")


@dataclass
class NoWarmupConfig:
    """warmup=none: no keys, so `warmup.length=...` is refused (as `scheduler.gamma` is with scheduler=constant)
    rather than silently ignored."""

    choice: ClassVar[str] = "warmup=none"  # named by the error for a key it does not have
    _target_: Optional[str] = None


@dataclass
class ExponentialWarmupConfig(WarmupConfig):
    def __post_init__(self) -> None:
        super().__post_init__()
        check("start_factor", self.start_factor, 0 < self.start_factor <= 1, "in (0, 1] (a geometric ramp)")


# ----------------------------------------------------------------------------------------- regularization


@dataclass
class L2Config:
    weight_decay: float = MISSING
    decay_1d: bool = MISSING  # also decay biases and norm parameters (1-D tensors)
    decoupled: bool = MISSING  # AdamW-style decay p <- p * (1 - lr * weight_decay), outside the gradient

    def __post_init__(self) -> None:
        check("weight_decay", self.weight_decay, self.weight_decay >= 0 and math.isfinite(self.weight_decay),
              "a finite number >= 0")


@dataclass
class DropoutConfig:
    p: float = MISSING

    def __post_init__(self) -> None:
        check("p", self.p, 0 <= self.p < 1, "in [0, 1)")


@dataclass
class AugmentConfig:
    max_shift: float = MISSING  # random translation, as a fraction of the image side (pad and crop)
    flip: Optional[float] = None  # probability of a horizontal flip; null: the kind of images decides
    rotation: Optional[float] = None  # largest rotation in degrees; null: the kind of images decides

    def __post_init__(self) -> None:
        check("max_shift", self.max_shift, 0 <= self.max_shift < 0.5, "in [0, 0.5)")
        check("flip", self.flip, self.flip is None or 0 <= self.flip <= 1, "a probability in [0, 1], or null")
        check("rotation", self.rotation, self.rotation is None or 0 <= self.rotation <= 180,
              "in [0, 180] (degrees), or null")


@dataclass
class LabelSmoothingConfig:
    epsilon: float = MISSING

    def __post_init__(self) -> None:
        check("epsilon", self.epsilon, 0 <= self.epsilon < 1, "in [0, 1)")


@dataclass
class GradClipConfig:
    max_norm: Optional[float] = None  # clip the total L2 norm of all gradients
    value: Optional[float] = None  # or clip each gradient element to [-value, value]

    def __post_init__(self) -> None:
        check("max_norm", self.max_norm, (self.max_norm is None) != (self.value is None),
              "set, or null with value set (exactly one of the two)")
        check_positive(self, "max_norm", "value")


@dataclass
class L1Config:
    coefficient: float = MISSING

    def __post_init__(self) -> None:
        check("coefficient", self.coefficient, self.coefficient >= 0 and math.isfinite(self.coefficient),
              "a finite number >= 0")


@dataclass
class RegularizationConfig:
    """Each option of the multi-select `regularization` group fills one field; an unset field is off."""

    l2: Optional[L2Config] = None
    dropout: Optional[DropoutConfig] = None
    augment: Optional[AugmentConfig] = None
    label_smoothing: Optional[LabelSmoothingConfig] = None
    grad_clip: Optional[GradClipConfig] = None
    l1: Optional[L1Config] = None


# ----------------------------------------------------------------------------------------- early stopping


@dataclass
class EarlyStoppingConfig:
    """Every option checks the training loss for divergence (the trainer's on_divergence decides what then)."""

    _target_: str = MISSING
    check_finite: bool = MISSING
    divergence_threshold: Optional[float] = None


@dataclass
class MonitoredStoppingConfig(EarlyStoppingConfig):
    monitor: str = MISSING
    mode: str = MISSING
    restore_best_weights: bool = MISSING

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("min", "max"))


@dataclass
class PatienceConfig(MonitoredStoppingConfig):
    patience: int = MISSING
    min_delta: float = MISSING
    baseline: Optional[float] = None
    start_from_epoch: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("patience", self.patience, self.patience >= 0, ">= 0")
        check("min_delta", self.min_delta, self.min_delta >= 0, ">= 0")
        check("start_from_epoch", self.start_from_epoch, self.start_from_epoch >= 0, ">= 0")


@dataclass
class TargetConfig(MonitoredStoppingConfig):
    stopping_threshold: float = MISSING


# --------------------------------------------------------------------------------------------- data, model


@dataclass
class BatchesConfig:
    """What every data set has: batch sizes and the fraction held out for validation."""

    _target_: str = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    val_fraction: float = MISSING

    def __post_init__(self) -> None:
        check_positive(self, "batch_size", "eval_batch_size")
        check("val_fraction", self.val_fraction, 0 < self.val_fraction < 1, "in (0, 1)")


@dataclass
class DatasetConfig(BatchesConfig):
    """A data set of examples, whose validation split is drawn at random with its own seed."""

    split_seed: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check_seed(self, "split_seed")


def validation_size(n: int, val_fraction: float) -> int:
    """Examples held out for validation: at least one, and at least one left to train on."""
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ConfigValueError("dataset.val_fraction", val_fraction,
                               f"small enough to leave training examples: of {n} examples it holds out {n_val}, "
                               f"leaving an empty training split (at most {(n - 0.5) / n:.4g} here)")
    return n_val


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
        check_seed(self, "seed")


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
class TextConfig(BatchesConfig):
    """A text as a sequence of tokens: the first 1 - val_fraction for training, the rest for validation (no
    random split: neighbouring windows overlap, so a random one would leak validation text into training)."""

    level: str = MISSING  # char | byte
    block_size: int = MISSING  # tokens per window

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "level", ("char", "byte"))
        check_positive(self, "block_size")


@dataclass
class TextFileConfig(TextConfig):
    path: Optional[str] = None  # null: the embedded corpus


@dataclass
class ShakespeareConfig(TextConfig):
    root: str = MISSING
    download: bool = MISSING
    url: str = MISSING
    sha256: str = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("sha256", self.sha256, len(self.sha256) == 64 and all(c in "0123456789abcdef" for c in self.sha256),
              "64 lowercase hexadecimal digits")


@dataclass
class ModelConfig:
    _target_: str = MISSING


@dataclass
class LayersConfig(ModelConfig):
    """The architecture knobs of lrtrain's own MLP and CNN."""

    activation: str = MISSING
    init: str = MISSING  # torch (its default) | kaiming | xavier | orthogonal
    norm: str = MISSING  # none | batch | layer

    def __post_init__(self) -> None:
        check_choice(self, "activation", ("relu", "gelu", "silu", "leaky_relu", "elu", "tanh"))
        check_choice(self, "init", ("torch", "kaiming", "xavier", "orthogonal"))
        check_choice(self, "norm", ("none", "batch", "layer"))


def check_parametrization(obj: Any) -> None:
    """μP's keys: the parametrization and, for mup, the width it equals the standard one at."""
    check_choice(obj, "parametrization", ("sp", "mup"))
    check_positive(obj, "base_width")


@dataclass
class MLPConfig(LayersConfig):
    hidden: list[int] = MISSING
    parametrization: str = MISSING  # sp | mup (lrtrain/parametrization.py)
    base_width: int = MISSING  # mup: every hidden layer's width in the model μP equals the standard one at

    def __post_init__(self) -> None:
        super().__post_init__()
        check("hidden", self.hidden, all(h > 0 for h in self.hidden), "a list of sizes > 0")
        check_parametrization(self)
        check("init", self.init, self.parametrization == "sp" or self.init in ("torch", "kaiming"),
              "torch or kaiming with parametrization=mup (μP rescales an init whose variance is 1/fan-in)")


@dataclass
class CNNConfig(LayersConfig):
    channels: list[int] = MISSING
    hidden: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("channels", self.channels, len(self.channels) > 0 and all(c > 0 for c in self.channels),
              "a non-empty list of widths > 0")
        check_positive(self, "hidden")


@dataclass
class ViTConfig(ModelConfig):
    patch_size: int = MISSING  # must divide the image side
    depth: int = MISSING  # encoder blocks
    heads: int = MISSING  # attention heads
    width: int = MISSING  # the embedding (hidden) size
    mlp_width: int = MISSING  # each block's MLP

    def __post_init__(self) -> None:
        check_positive(self, "patch_size", "depth", "heads", "width", "mlp_width")
        check("width", self.width, self.width % self.heads == 0, f"a multiple of heads ({self.heads})")


@dataclass
class GPTConfig(ModelConfig):
    n_layer: int = MISSING
    n_head: int = MISSING
    n_embd: int = MISSING
    dropout: float = MISSING
    bias: bool = MISSING  # biases in the Linear layers and LayerNorms
    norm_position: str = MISSING  # pre | post
    block_size: Optional[int] = None  # the longest context (position embeddings); null: dataset.block_size
    parametrization: str = MISSING  # sp | mup (lrtrain/parametrization.py)
    base_width: int = MISSING  # mup: the n_embd μP equals the standard parametrization at

    def __post_init__(self) -> None:
        check_positive(self, "n_layer", "n_head", "n_embd", "block_size")
        check("n_embd", self.n_embd, self.n_embd % self.n_head == 0, f"a multiple of n_head ({self.n_head})")
        check_parametrization(self)
        check("base_width", self.base_width, self.parametrization == "sp" or self.base_width % self.n_head == 0,
              f"a multiple of n_head ({self.n_head}) with parametrization=mup")
        check("dropout", self.dropout, 0 <= self.dropout < 1, "in [0, 1)")
        check_choice(self, "norm_position", ("pre", "post"))


# ------------------------------------------------------------------------------------------------ trainer


@dataclass
class TrainerConfig:
    max_epochs: int = MISSING
    max_steps: Optional[int] = None
    device: str = MISSING
    precision: str = MISSING
    compile: bool = MISSING
    seed: int = MISSING
    num_threads: Optional[int] = None
    monitor: str = MISSING
    monitor_mode: str = MISSING
    log_every_n_steps: int = MISSING
    progress: str = MISSING
    checkpoint_every_n_steps: Optional[int] = None
    keep_last_k: int = MISSING
    save_at: list[Any] = MISSING  # durations
    resume: Optional[str] = None
    overwrite: bool = MISSING
    on_divergence: str = MISSING
    rollback_factor: float = MISSING
    max_rollbacks: int = MISSING
    strategy: str = MISSING
    scale_lr_with_world_size: bool = MISSING
    val_every: Any = MISSING  # a duration
    val_batches: Optional[int] = None

    def __post_init__(self) -> None:
        check("max_epochs", self.max_epochs, self.max_epochs >= 1, ">= 1")
        check_duration(self, "val_every")
        check("val_every", self.val_every, parse_duration(self.val_every).amount > 0, "a duration above 0")
        check_positive(self, "val_batches")
        check_seed(self, "seed")
        check_positive(self, "max_steps", "num_threads", "log_every_n_steps", "checkpoint_every_n_steps")
        check("keep_last_k", self.keep_last_k, self.keep_last_k >= 0, ">= 0")
        for at in self.save_at:
            try:
                parse_duration(at)
            except ValueError as e:
                raise ConfigValueError("save_at", list(self.save_at), f"a list of durations: {at!r} is not {e}") from None
        check_choice(self, "on_divergence", ("stop", "rollback"))
        check("rollback_factor", self.rollback_factor, 0 < self.rollback_factor < 1, "in (0, 1)")
        check("max_rollbacks", self.max_rollbacks, self.max_rollbacks >= 0, ">= 0")
        check_choice(self, "device", ("auto", "cpu", "cuda", "mps"))
        check_choice(self, "precision", ("32", "bf16"))
        check_choice(self, "monitor_mode", ("min", "max"))
        check_choice(self, "progress", ("auto", "rich", "plain", "none"))
        check_choice(self, "strategy", ("single", "ddp"))


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


# ---------------------------------------------------------------------------------------- weight averaging


@dataclass
class NoAveragingConfig:
    kind: str = MISSING  # none


@dataclass
class SWAConfig:
    kind: str = MISSING  # swa
    start: Any = MISSING  # a duration
    every: int = MISSING  # steps between updates

    def __post_init__(self) -> None:
        check_duration(self, "start")
        check("every", self.every, self.every >= 1, ">= 1")


@dataclass
class EMAConfig(SWAConfig):
    decay: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check("decay", self.decay, 0 < self.decay < 1, "in (0, 1), e.g. 0.999")


# ------------------------------------------------------------------------------------------- sweep report


@dataclass
class ReportConfig:
    """How a sweep's report (lrtrain/sweep/report.py) groups, summarises and plots its jobs."""

    replicate_keys: list[str] = MISSING  # jobs differing only in these keys are one configuration's replicates
    x: str = MISSING  # the key lr_sensitivity.png plots the monitored metric against
    confidence: float = MISSING  # of the t-interval around each configuration's mean
    band: str = MISSING  # sweep.png's band around the mean curve: std | minmax

    def __post_init__(self) -> None:
        check("confidence", self.confidence, 0 < self.confidence < 1, "in (0, 1), e.g. 0.95")
        check_choice(self, "band", ("std", "minmax"))


@dataclass
class CoordCheckConfig:
    """mode=coord_check (lrtrain/coord_check.py): each layer's output size over the first steps, per width."""

    widths: list[int] = MISSING  # model.hidden (every layer) or model.n_embd
    steps: int = MISSING  # training steps recorded at each width; step 0 is the initialisation
    seeds: list[int] = MISSING  # trainer.seed of each repetition

    def __post_init__(self) -> None:
        check("widths", self.widths, len(self.widths) > 0 and all(w > 0 for w in self.widths),
              "a non-empty list of widths > 0")
        check("steps", self.steps, self.steps >= 1, ">= 1")
        check("seeds", self.seeds, len(self.seeds) > 0, "a non-empty list of seeds")
        for seed in self.seeds:
            check("seeds", self.seeds, -2**63 <= seed < 2**64, "integers in [-2**63, 2**64 - 1] (torch's seed range)")


# ---------------------------------------------------------------------------- Hydra's sweeper and launchers
# The settings of lrtrain's Hydra plugins (hydra_plugins/), `hydra.sweeper.*` and `hydra.launcher.*`: each YAML in
# configs/hydra/ names its schema as the options above do, and the plugin's `setup` checks them
# (`validate_settings`): Hydra builds a plugin from the keys, and no `validate` runs on the `hydra` node.


@dataclass
class OptunaSweeperConfig:
    """hydra/sweeper=optuna (hydra_plugins/lrtrain_sweeper, lrtrain/sweep/search.py)."""

    _target_: str = MISSING
    _recursive_: bool = MISSING
    direction: str = MISSING
    study_name: str = MISSING
    storage: Optional[str] = None
    n_trials: int = MISSING
    n_jobs: int = MISSING
    failed_value: Optional[float] = None
    heartbeat_interval: Optional[int] = None
    seeds: int = MISSING  # trainer.seed values each trial trains; Optuna is told their mean
    params: dict[str, Any] = MISSING  # the search space: key -> Hydra's sweep syntax (checked by the search)
    sampler: Any = MISSING  # an Optuna sampler's _target_ and arguments (hydra/sweeper/sampler)
    pruner: Any = MISSING  # an Optuna pruner's, or an option's name (hydra/sweeper/pruner)

    def __post_init__(self) -> None:
        check_choice(self, "direction", ("minimize", "maximize"))
        check("n_trials", self.n_trials, self.n_trials >= 1, "an integer >= 1")
        check("n_jobs", self.n_jobs, self.n_jobs >= 1, "an integer >= 1")
        check("seeds", self.seeds, self.seeds >= 1, "an integer >= 1")
        check("heartbeat_interval", self.heartbeat_interval,
              self.heartbeat_interval is None or self.heartbeat_interval >= 1, "null or seconds >= 1")


@dataclass
class RayResourcesConfig:
    cpu: float = MISSING
    gpu: float = MISSING


@dataclass
class RayASHAConfig:
    grace_period: int = MISSING
    reduction_factor: float = MISSING
    max_t: Optional[int] = None


@dataclass
class RayPBTConfig:
    perturbation_interval: int = MISSING
    quantile_fraction: float = MISSING
    resample_probability: float = MISSING
    perturbation_factors: list[float] = MISSING
    synch: bool = MISSING
    hyperparam_mutations: dict[str, str] = MISSING


RAY_SCHEDULERS = ("fifo", "asha", "pbt")
RAY_SEARCH_ALGS = ("random", "optuna")


@dataclass
class RayTuneConfig:
    """hydra/sweeper=ray_tune (hydra_plugins/lrtrain_ray, lrtrain/sweep/ray_tune.py); what one key's value cannot
    say (seeds with a scheduler, PBT's keys against the search space) is checked by the search before Ray starts."""

    _target_: str = MISSING
    num_samples: int = MISSING
    max_concurrent_trials: Optional[int] = None
    resources_per_trial: RayResourcesConfig = field(default_factory=RayResourcesConfig)
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    search_alg: str = MISSING
    scheduler: str = MISSING
    asha: RayASHAConfig = field(default_factory=RayASHAConfig)
    pbt: RayPBTConfig = field(default_factory=RayPBTConfig)
    metric: Optional[str] = None
    mode: Optional[str] = None
    seed: Optional[int] = None
    seeds: int = MISSING
    params: dict[str, str] = MISSING

    def __post_init__(self) -> None:
        check("scheduler", self.scheduler, self.scheduler in RAY_SCHEDULERS, " | ".join(RAY_SCHEDULERS))
        check("search_alg", self.search_alg, self.search_alg in RAY_SEARCH_ALGS, " | ".join(RAY_SEARCH_ALGS))
        check("num_samples", self.num_samples, self.num_samples >= 1, "at least 1")
        check("seeds", self.seeds, self.seeds >= 1, "at least 1")
        check("mode", self.mode, self.mode in (None, "min", "max"), "min, max or null (trainer.monitor_mode)")


@dataclass
class LrtrainLauncherConfig:
    """hydra/launcher=lrtrain (hydra_plugins/lrtrain_launcher): no settings of its own."""

    choice: ClassVar[str] = "hydra/launcher=lrtrain"  # named by the error for a key it does not have
    _target_: str = MISSING


@dataclass
class FusedLauncherConfig(LrtrainLauncherConfig):
    """hydra/launcher=fused (hydra_plugins/lrtrain_launcher/fused.py)."""

    curve_workers: int = MISSING  # processes drawing the fused jobs' curves.png; 0: this process draws them

    def __post_init__(self) -> None:
        check("curve_workers", self.curve_workers, self.curve_workers >= 0, "an integer >= 0")


@dataclass
class Config:
    mode: str = MISSING  # train | lr_find | coord_check
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    warmup: Any = MISSING
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    logger: dict[str, Any] = field(default_factory=dict)  # name -> a sink's _target_ and arguments
    early_stopping: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    trainer: TrainerConfig = MISSING
    lr_find: Any = MISSING
    report: ReportConfig = MISSING
    averaging: Any = MISSING
    fork: Any = MISSING  # untyped: its key `from` cannot be a dataclass field; check_fork checks it
    coord_check: CoordCheckConfig = MISSING

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("train", "lr_find", "coord_check"))
        check_fork(self.fork)


def check_fork(fork: dict[str, Any]) -> None:
    """The fork keys: a parent dir and where to fork when forking, a duration, a shape, an LR."""
    def bad(key: str, valid: str) -> ConfigValueError:
        return ConfigValueError(f"fork.{key}", fork[key], valid)

    if fork["from"] is not None and not isinstance(fork["from"], str):
        raise bad("from", "a run dir (of a run with trainer.save_at)")
    if fork["from"] is not None and fork["at"] is None:
        raise bad("at", "where to fork: a duration of the parent's run, such as 500steps or 50%")
    for key in ("at", "cooldown"):
        if fork[key] is not None:
            try:
                if parse_duration(fork[key]).amount <= 0:
                    raise bad(key, "a duration above 0")
            except ValueError as e:
                raise bad(key, str(e)) from None
    if fork["shape"] not in ("linear", "cosine", "1-sqrt"):
        raise bad("shape", "one of linear, cosine, 1-sqrt (scheduler=wsd's decay types)")
    if isinstance(fork["min_lr"], bool) or not isinstance(fork["min_lr"], (int, float)) or not 0 <= fork["min_lr"] < math.inf:
        raise bad("min_lr", "a finite number >= 0")


def schemas() -> dict[str, type]:
    """Every schema, by its class name: the name a YAML's defaults list gives it (`- /AdamConfig@_here_`)."""
    return {name: obj for name, obj in globals().items()
            if isinstance(obj, type) and is_dataclass(obj) and obj.__module__ == __name__}


def register() -> None:
    """Store the schemas at the root of Hydra's ConfigStore under their class names (not as groups, so `--help`
    lists only options), and the resolvers the configs use."""
    cs = ConfigStore.instance()
    for name, node in schemas().items():
        cs.store(name=name, node=node)
    if not OmegaConf.has_resolver("lrtrain_run_dir"):
        OmegaConf.register_new_resolver("lrtrain_run_dir", run_dir_for)


def run_dir_for(resume: Optional[str], default: str, strategy: str = "single") -> str:
    """`trainer.resume=<run dir>` continues in that run dir; anything else gets a new dated one.
    Under `trainer.strategy=ddp`, ranks > 0 get a scratch dir: rank 0 alone writes the run dir."""
    if strategy == "ddp":
        from lrtrain.rundir import launched_rank, scratch_run_dir

        if launched_rank():
            return scratch_run_dir()
    if resume and resume != "auto" and Path(resume).expanduser().is_dir():
        return str(Path(resume).expanduser())
    return default


def validate(cfg: DictConfig, prefix: str = "") -> None:
    """Run every schema's range checks, innermost first; raise ConfigValueError naming the full key."""
    for key in cfg:
        child = cfg[key]
        if isinstance(child, DictConfig):
            validate(child, f"{prefix}{key}.")
    schema = OmegaConf.get_type(cfg)
    if is_dataclass(schema):  # the root too: it checks `mode`
        try:
            check_finite(cfg, schema)
            OmegaConf.to_object(cfg)
        except ConfigValueError as e:
            raise e.under(prefix[:-1]) from None


def validate_settings(node: DictConfig, prefix: str) -> None:
    """A Hydra plugin's settings (`hydra.sweeper`, `hydra.launcher`) against their schema: its range checks, and
    no key the schema lacks (`+hydra.sweeper.n_trails=5` adds one past the schema, and Hydra would hand it to
    the plugin's constructor: ignored, or a TypeError)."""
    from omegaconf.errors import ConfigKeyError

    schema = OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return
    names = {f.name for f in fields(schema)}
    for key in node:
        if key not in names:
            e = ConfigKeyError(f"Key '{key}' not in '{schema.__name__}'")
            e.full_key, e.object_type = f"{prefix}{key}", schema  # as OmegaConf's own refusal names them
            raise e
    validate(node, prefix)


def float_fields(schema: type) -> dict[str, str]:
    """The float keys of a schema: name -> "float", "optional" (null is its off) or "list" (of floats)."""
    import typing

    kinds = {}
    for f, hint in ((f, typing.get_type_hints(schema)[f.name]) for f in fields(schema)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if hint is float:
            kinds[f.name] = "float"
        elif typing.get_origin(hint) is typing.Union and args == [float]:
            kinds[f.name] = "optional"
        elif typing.get_origin(hint) is list and args and float in (args[0], *typing.get_args(args[0])):
            kinds[f.name] = "list"
    return kinds


# YAML's spellings of the non-finite floats (.inf, -.inf, .nan), as a config file writes them and the messages
# below name them: Hydra's override grammar knows only inf and nan, and passes ".inf" on as a string that no
# float key takes ("could not be converted to Float"). A whole value or list element, unquoted.
_YAML_NON_FINITE = re.compile(r"(?<=[=,\[])\s*([-+]?)\.(inf|Inf|INF|nan|NaN|NAN)\s*(?=$|[,\]])")


def yaml_floats(args: list[str]) -> list[str]:
    """Command-line overrides with YAML's .inf, -.inf and .nan written as Hydra's inf, -inf and nan (Hydra's own
    keys, which hold paths, are left as they are)."""
    def one(arg: str) -> str:
        key, eq, value = arg.partition("=")
        if not eq or arg.startswith("-") or key.lstrip("+~").startswith("hydra."):
            return arg
        return key + _YAML_NON_FINITE.sub(lambda m: m.group(1) + m.group(2).lower(), eq + value)

    return [one(arg) for arg in args]


def check_finite(node: DictConfig, schema: type) -> None:
    """Every float of a schema is a finite number: inf and nan would pass most range checks (nan fails every
    comparison) and then train nothing, or turn a check off. A key whose field allows inf says what it means."""
    allow = {f.name: f.metadata.get("inf") for f in fields(schema)}
    for name, kind in float_fields(schema).items():
        if name not in node or OmegaConf.is_missing(node, name) or node[name] is None:
            continue
        value = node[name]
        values = list(value) if kind == "list" else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v) and not (v == math.inf and allow[name]):
                value = list(value) if kind == "list" else value
                valid = {"float": "a finite number", "optional": "a finite number, or null",
                         "list": "finite numbers"}[kind]
                if allow[name]:
                    valid += f" (.inf: {allow[name]})"
                raise ConfigValueError(name, value, valid)

