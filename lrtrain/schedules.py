"""Learning-rate schedules as pure functions of the optimizer-step counter.

A schedule answers `lr(step, base_lr)`: the learning rate of the 0-based optimizer step `step` for a
parameter group whose configured LR is `base_lr` (so per-group LRs scale with the same schedule, and the
absolute floors such as `eta_min` stay absolute, as in torch). The training loop owns the counter and asks
before every optimizer step; nothing here keeps hidden state except `Plateau`, which is driven by a metric
and keeps a few plain numbers (`state_dict`). Schedules that cycle momentum (`cyclic`, `onecycle`) also
answer `momentum(step)`, a pure function of the step too; every other schedule answers None.

A schedule of your own is a subclass of `Schedule` that implements `value(t, base_lr)` (README: "Your own
schedule"); `scheduler=custom scheduler._target_=my_module.MySchedule` builds it like the ones here.

`interval: step` evaluates the formula at every step; `interval: epoch` evaluates it at the epoch index and
holds it for the epoch, which is what a torch scheduler stepped once per epoch does. `t` below is that
clock: the step, or the epoch, counted from where the schedule starts (after warmup).

The formulas follow torch's closed forms (`_get_closed_form_lr`, or `get_lr` where torch computes directly)
operation for operation, so a run and the torch scheduler agree to the last few ulps.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Optional

from lrtrain.durations import Timeline


class Schedule:
    """Base class: turns a step into the schedule's own clock (steps or epochs) and calls `value`."""

    #: the schedule ramps up by itself (onecycle, cyclic): a warmup in front makes no sense.
    own_ramp = False
    #: the schedule's formula takes the warmup length (inverse_sqrt) instead of being wrapped by a warmup.
    uses_warmup = False
    #: the schedule's config holds absolute LRs (cyclic base_lr/max_lr, onecycle max_lr); the build passes
    #: the optimizer's LR so that other parameter groups scale by base_lr / optimizer_lr.
    absolute_lrs = False
    #: duration keys that must last at least one step (a cycle or period of zero steps never ends, or divides
    #: by zero); the build refuses them before anything runs. A null one (where allowed) means the whole run.
    positive_durations: tuple[str, ...] = ()

    def __init__(self, timeline: Timeline, interval: str = "step"):
        self.timeline = timeline
        self.interval = interval

    def ticks(self, duration: Any) -> int:
        """A duration in this schedule's clock units (steps, or whole epochs for interval=epoch)."""
        return self.timeline.ticks(duration, self.interval)

    @property
    def total_ticks(self) -> int:
        return self.timeline.total_ticks(self.interval)

    def tick(self, step: int) -> int:
        """The schedule's clock at optimizer step `step`: the step, or the epoch for interval=epoch."""
        return self.timeline.tick(step, self.interval)

    def __call__(self, step: int, base_lr: float) -> float:
        return self.value(self.tick(step), base_lr)

    def value(self, t: int, base_lr: float) -> float:
        raise NotImplementedError

    def momentum(self, step: int) -> Optional[float]:
        """The momentum (or Adam's beta1) of step `step`, for schedules that cycle it; None: left alone."""
        return None

    # Metric-driven schedules (plateau) override these; pure ones have nothing to observe or save.
    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        """Called after each epoch's validation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class Constant(Schedule):
    """lr = base_lr."""

    def value(self, t: int, base_lr: float) -> float:
        return base_lr


class Step(Schedule):
    """lr = base_lr * gamma ** floor(t / step_size)   (torch StepLR)."""

    positive_durations = ("step_size",)

    def __init__(self, timeline: Timeline, step_size: Any, gamma: float, interval: str = "step"):
        super().__init__(timeline, interval)
        self.step_size, self.gamma = self.ticks(step_size), gamma

    def value(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (t // self.step_size)


class MultiStep(Schedule):
    """lr = base_lr * gamma ** (number of milestones <= t)   (torch MultiStepLR)."""

    def __init__(self, timeline: Timeline, milestones: list, gamma: float, interval: str = "step"):
        super().__init__(timeline, interval)
        self.milestones = [self.ticks(m) for m in milestones]
        self.gamma = gamma

    def value(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, t)


class Exponential(Schedule):
    """lr = base_lr * gamma ** (t / period), a decay by `gamma` per `period` (default 1ep: torch ExponentialLR
    stepped per epoch with interval=epoch); staircase: gamma ** floor(t / period). With period=10000steps this
    is Keras' ExponentialDecay(decay_rate=gamma, decay_steps=10000)."""

    positive_durations = ("period",)

    def __init__(self, timeline: Timeline, gamma: float, staircase: bool, period: Any, interval: str = "step"):
        super().__init__(timeline, interval)
        self.gamma, self.staircase, self.period = gamma, staircase, self.ticks(period)

    def value(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (t // self.period if self.staircase else t / self.period)


class Polynomial(Schedule):
    """lr = (base_lr - end_lr) * (1 - min(t, total) / total) ** power + end_lr
    (torch PolynomialLR when end_lr = 0)."""

    positive_durations = ("total",)

    def __init__(self, timeline: Timeline, power: float, end_lr: float, total: Any = None,
                 interval: str = "step"):
        super().__init__(timeline, interval)
        self.total = self.total_ticks if total is None else self.ticks(total)
        self.power, self.end_lr = power, end_lr

    def value(self, t: int, base_lr: float) -> float:
        return (base_lr - self.end_lr) * (1.0 - min(self.total, t) / self.total) ** self.power + self.end_lr


class Linear(Schedule):
    """lr = base_lr * (1 + (end_factor - 1) * min(t, total) / total)   (torch LinearLR, start_factor=1)."""

    positive_durations = ("total",)

    def __init__(self, timeline: Timeline, end_factor: float, total: Any = None, interval: str = "step"):
        super().__init__(timeline, interval)
        self.total = self.total_ticks if total is None else self.ticks(total)
        self.end_factor = end_factor

    def value(self, t: int, base_lr: float) -> float:
        return base_lr * (1.0 + (self.end_factor - 1.0) * min(self.total, t) / self.total)


class Cosine(Schedule):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2   (torch CosineAnnealingLR)."""

    positive_durations = ("T_max",)

    def __init__(self, timeline: Timeline, eta_min: float, T_max: Any = None, interval: str = "step"):
        super().__init__(timeline, interval)
        self.T_max = self.total_ticks if T_max is None else self.ticks(T_max)
        self.eta_min = eta_min

    def value(self, t: int, base_lr: float) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class CosineRestarts(Schedule):
    """SGDR: cycle i lasts T_i = T_0 * T_mult ** i; within it, at T_cur,
    lr = eta_min + (base_lr * peak_decay ** i - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2
    (torch CosineAnnealingWarmRestarts when peak_decay = 1)."""

    positive_durations = ("T_0",)

    def __init__(self, timeline: Timeline, T_0: Any, T_mult: int, eta_min: float, peak_decay: float,
                 interval: str = "step"):
        super().__init__(timeline, interval)
        self.T_0, self.T_mult, self.eta_min, self.peak_decay = self.ticks(T_0), T_mult, eta_min, peak_decay

    def cycle(self, t: int) -> tuple[int, int, int]:
        """(cycle index, T_cur, T_i) at tick t."""
        i, T_i = 0, self.T_0
        while t >= T_i:
            t -= T_i
            T_i *= self.T_mult
            i += 1
        return i, t, T_i

    def value(self, t: int, base_lr: float) -> float:
        i, T_cur, T_i = self.cycle(t)
        peak = base_lr if self.peak_decay == 1 else base_lr * self.peak_decay ** i
        return self.eta_min + (peak - self.eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2


class _Absolute(Schedule):
    """Schedules whose config names absolute LRs: they hold for the parameter group whose base LR is the
    optimizer's; another group's LR is scaled by its base_lr / optimizer_lr."""

    absolute_lrs = True

    def __init__(self, timeline: Timeline, optimizer_lr: float, interval: str = "step"):
        super().__init__(timeline, interval)
        self.optimizer_lr = optimizer_lr

    def __call__(self, step: int, base_lr: float) -> float:
        lr = super().__call__(step, base_lr)
        return lr if base_lr == self.optimizer_lr else lr * (base_lr / self.optimizer_lr)


class Cyclic(_Absolute):
    """Triangular cycles between base_lr and max_lr (torch CyclicLR):
    cycle = floor(1 + t / (up + down)), x = 1 + t / (up + down) - cycle,
    h = x / r if x <= r else (x - 1) / (r - 1) with r = up / (up + down),
    lr = base_lr + (max_lr - base_lr) * h * s, s = 1 (triangular), 1 / 2 ** (cycle - 1) (triangular2),
    gamma ** t (exp_range). With cycle_momentum, momentum (or beta1) = max_momentum - (max_momentum -
    base_momentum) * h * s: low when the LR is high."""

    positive_durations = ("step_size_up", "step_size_down")

    own_ramp = True

    def __init__(self, timeline: Timeline, optimizer_lr: float, max_lr: float, step_size_up: Any,
                 mode: str, gamma: float, cycle_momentum: bool, base_momentum: float, max_momentum: float,
                 base_lr: Optional[float] = None, step_size_down: Any = None, interval: str = "step"):
        super().__init__(timeline, optimizer_lr, interval)
        self.base_lr = optimizer_lr if base_lr is None else base_lr
        self.max_lr, self.mode, self.gamma = max_lr, mode, gamma
        self.cycle_momentum, self.base_momentum, self.max_momentum = cycle_momentum, base_momentum, max_momentum
        up = float(self.ticks(step_size_up))
        down = up if step_size_down is None else float(self.ticks(step_size_down))
        self.total_size = up + down
        self.step_ratio = up / self.total_size

    def shape(self, t: int) -> tuple[float, float]:
        """(h, s) at tick t: the triangle's height in [0, 1] and the mode's scale."""
        cycle = math.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        scale_factor = x / self.step_ratio if x <= self.step_ratio else (x - 1) / (self.step_ratio - 1)
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1 / (2.0 ** (cycle - 1))
        else:
            scale = self.gamma ** t
        return scale_factor, scale

    def value(self, t: int, base_lr: float) -> float:
        scale_factor, scale = self.shape(t)
        return self.base_lr + (self.max_lr - self.base_lr) * scale_factor * scale

    def momentum(self, step: int) -> Optional[float]:
        if not self.cycle_momentum:
            return None
        scale_factor, scale = self.shape(self.tick(step))
        return self.max_momentum - (self.max_momentum - self.base_momentum) * scale_factor * scale


class OneCycle(_Absolute):
    """torch OneCycleLR over the whole run: from max_lr / div_factor up to max_lr in the first pct_start of
    the run, then down to max_lr / div_factor / final_div_factor (three_phase: back to max_lr / div_factor
    first, then down), annealing by cosine or linearly between phase ends. With cycle_momentum, momentum (or
    beta1) goes the other way, max_momentum -> base_momentum -> max_momentum, on the same phases."""

    own_ramp = True

    def __init__(self, timeline: Timeline, optimizer_lr: float, pct_start: float, anneal_strategy: str,
                 div_factor: float, final_div_factor: float, three_phase: bool, cycle_momentum: bool,
                 base_momentum: float, max_momentum: float, max_lr: Optional[float] = None,
                 interval: str = "step"):
        super().__init__(timeline, optimizer_lr, interval)
        self.max_lr = optimizer_lr if max_lr is None else max_lr
        self.initial_lr = self.max_lr / div_factor
        self.min_lr = self.initial_lr / final_div_factor
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = cycle_momentum
        total = self.total_ticks
        lo, hi = base_momentum, max_momentum
        # (last tick of the phase, LR at its start and end, momentum at its start and end)
        if three_phase:
            self.phases = [(float(pct_start * total) - 1, self.initial_lr, self.max_lr, hi, lo),
                           (float(2 * pct_start * total) - 2, self.max_lr, self.initial_lr, lo, hi),
                           (total - 1, self.initial_lr, self.min_lr, hi, hi)]
        else:
            self.phases = [(float(pct_start * total) - 1, self.initial_lr, self.max_lr, hi, lo),
                           (total - 1, self.max_lr, self.min_lr, lo, hi)]

    def anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def phase(self, t: int) -> tuple[tuple, float]:
        """The phase tick t falls in, and how far into it (0 to 1)."""
        start_step = 0.0
        for i, phase in enumerate(self.phases):
            end_step = phase[0]
            if t <= end_step or i == len(self.phases) - 1:
                return phase, (t - start_step) / (end_step - start_step)
            start_step = end_step
        raise AssertionError("unreachable")

    def value(self, t: int, base_lr: float) -> float:
        (_, start_lr, end_lr, _, _), pct = self.phase(t)
        return self.anneal(start_lr, end_lr, pct)

    def momentum(self, step: int) -> Optional[float]:
        if not self.cycle_momentum:
            return None
        (_, _, _, start, end), pct = self.phase(self.tick(step))
        return self.anneal(start, end, pct)


class InverseSqrt(Schedule):
    """The Transformer (Noam) schedule, with s = t + 1 and w the warmup length:
    lr = base_lr * scale * min(s ** -0.5, s * w ** -1.5). It rises linearly to its peak at the last warmup
    step (s = w) and decays as 1 / sqrt(s) after. scale = d_model ** -0.5 when d_model is set; by default
    scale = sqrt(w), which makes the peak exactly base_lr."""

    uses_warmup = True

    def __init__(self, timeline: Timeline, warmup: int, d_model: Optional[int] = None,
                 scale: Optional[float] = None, interval: str = "step"):
        super().__init__(timeline, interval)
        self.warmup = timeline.ticks(f"{warmup}steps", interval)
        if d_model is not None:
            self.scale = d_model ** -0.5
        else:
            self.scale = math.sqrt(self.warmup) if scale is None else scale

    def value(self, t: int, base_lr: float) -> float:
        s = t + 1
        return base_lr * self.scale * min(s ** -0.5, s * self.warmup ** -1.5)


class WSD(Schedule):
    """Warmup-stable-decay: base_lr until the last decay_fraction of the run, then, with p going from 0 to 1
    over the decay, lr = min_lr + (base_lr - min_lr) * f(p), f = 1 - p (linear), (1 + cos(pi p)) / 2
    (cosine), 1 - sqrt(p) (1-sqrt). The warmup comes from the warmup group."""

    def __init__(self, timeline: Timeline, decay_fraction: float, decay_type: str, min_lr: float,
                 interval: str = "step"):
        super().__init__(timeline, interval)
        self.decay = min(self.total_ticks, self.ticks(f"{decay_fraction * 100:.12f}%"))
        self.stable = self.total_ticks - self.decay
        self.decay_type, self.min_lr = decay_type, min_lr

    def value(self, t: int, base_lr: float) -> float:
        if t < self.stable:
            return base_lr
        p = min(1.0, (t - self.stable) / self.decay)
        if self.decay_type == "linear":
            f = 1.0 - p
        elif self.decay_type == "cosine":
            f = (1 + math.cos(math.pi * p)) / 2
        else:
            f = 1.0 - math.sqrt(p)
        return self.min_lr + (base_lr - self.min_lr) * f


class Plateau(Schedule):
    """torch ReduceLROnPlateau: after each observed epoch, if `monitor` has not improved on its best by
    `threshold` (rel: a fraction of the best; abs: an amount) for more than `patience` epochs, the LR is
    multiplied by `factor` (not below min_lr; a change smaller than 1e-8 is skipped), then `cooldown`
    epochs pass before counting again. The new LR applies from the next optimizer step."""

    EPS = 1e-8

    def __init__(self, timeline: Timeline, monitor: str, mode: str, factor: float, patience: int,
                 threshold: float, threshold_mode: str, cooldown: int, min_lr: float, interval: str = "step"):
        super().__init__(timeline, interval)
        self.monitor, self.mode, self.factor, self.patience = monitor, mode, factor, patience
        self.threshold, self.threshold_mode, self.cooldown, self.min_lr = threshold, threshold_mode, cooldown, min_lr
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.reductions = 0
        self._cache: dict[tuple[int, float], float] = {}

    def improved(self, value: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return value < self.best * (1.0 - self.threshold)
        if self.mode == "min":
            return value < self.best - self.threshold
        if self.threshold_mode == "rel":
            return value > self.best * (self.threshold + 1.0)
        return value > self.best + self.threshold

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        value = float(metrics[self.monitor])
        if self.improved(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.reductions += 1
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def value(self, t: int, base_lr: float) -> float:
        # Replays torch's per-group recursion (multiply, clamp, skip tiny changes) so the values are its own.
        key = (self.reductions, base_lr)
        if key not in self._cache:
            lr = base_lr
            for _ in range(self.reductions):
                new = max(lr * self.factor, self.min_lr)
                if lr - new > self.EPS:
                    lr = new
            self._cache[key] = lr
        return self._cache[key]

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter, "reductions": self.reductions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.reductions = int(state["reductions"])
