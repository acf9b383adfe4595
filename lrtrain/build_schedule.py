"""The part of `build` that makes the LR schedule (and its warmup) from the config.

It lives apart from `lrtrain/build.py` and imports no torch, so that `lrtrain-schedule` can draw a schedule
without paying for torch, the data or the model.
"""

from __future__ import annotations

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from lrtrain.errors import ConfigValueError
from lrtrain.durations import Timeline
from lrtrain.schedules import Cyclic, Schedule
from lrtrain.warmup import Warmup


def build_schedule(cfg: DictConfig, timeline: Timeline) -> Schedule | Warmup:
    """The scheduler (and its warmup) of `cfg` over `timeline`; checks the combinations that make no sense."""
    target = get_class(cfg.scheduler._target_)
    total_steps, spe = timeline.total_steps, timeline.steps_per_epoch
    warmup_steps = timeline.steps(cfg.warmup.length) if cfg.warmup._target_ else 0
    if warmup_steps and cfg.scheduler.interval == "epoch":  # stepped per epoch: whole epochs of warmup
        warmup_steps = timeline.ticks(cfg.warmup.length, "epoch") * spe
    warmup = (cfg.warmup._target_ or "none").rsplit(".", 1)[-1].replace("Warmup", "").lower()
    if warmup_steps and target.own_ramp:
        raise ConfigValueError("warmup", warmup, f"none with scheduler={target.__name__.lower()}, "
                               "which ramps up by itself")
    if target.uses_warmup and not (warmup_steps and warmup == "linear"):
        raise ConfigValueError("warmup", warmup, "linear with a length > 0 for scheduler=inverse_sqrt "
                               "(its own linear ramp)")
    if warmup_steps >= total_steps:
        raise ConfigValueError("warmup.length", cfg.warmup.length, f"shorter than the run ({total_steps} steps)")
    extra: dict = {}
    if target.absolute_lrs:
        extra["optimizer_lr"] = cfg.optimizer.lr
    if target.uses_warmup:  # the schedule's own formula ramps over the warmup length
        extra["warmup"], warmup_steps = warmup_steps, 0
    schedule = instantiate(cfg.scheduler, _partial_=True, _convert_="all")(
        timeline=Timeline(spe, total_steps - warmup_steps, run_steps=total_steps), **extra)
    milestones = getattr(schedule, "milestones", None)
    if milestones is not None and any(a >= b for a, b in zip(milestones, milestones[1:])):
        raise ConfigValueError("scheduler.milestones", list(cfg.scheduler.milestones),
                               f"strictly increasing (in {cfg.scheduler.interval}s: {milestones})")
    if isinstance(schedule, Cyclic) and schedule.max_lr <= schedule.base_lr:
        raise ConfigValueError("scheduler.max_lr", cfg.scheduler.max_lr, f"> base_lr ({schedule.base_lr})")
    if warmup_steps:
        schedule = instantiate(cfg.warmup, _partial_=True)(schedule=schedule, length=warmup_steps)
    return schedule
