"""The part of `build` that makes the LR schedule (and its warmup) from the config.

It lives apart from `lrtrain/build.py` and imports no torch, so that `lrtrain-schedule` can draw a schedule
without paying for torch, the data or the model.
"""

from __future__ import annotations

import importlib
import inspect

from hydra.utils import instantiate
from omegaconf import DictConfig

from lrtrain.errors import ConfigValueError
from lrtrain.durations import Timeline, parse_duration
from lrtrain.schedules import Cyclic, Schedule
from lrtrain.warmup import Warmup


def _schedule_class(name: str) -> type:
    """The schedule class `scheduler._target_` names, or a one-line error saying what is wrong with it."""
    module_name, _, class_name = name.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), class_name)
    except Exception as e:  # no such module (PYTHONPATH?), no such class in it, or the module itself fails
        cause = (str(e).strip().splitlines() or [""])[0]
        raise ConfigValueError("scheduler._target_", name, "a Schedule class importable as module.Class (is its "
                               f"folder on PYTHONPATH?): {type(e).__name__}: {cause}") from None
    if not (isinstance(target, type) and issubclass(target, Schedule)):
        raise ConfigValueError("scheduler._target_", name, "a subclass of lrtrain.schedules.Schedule")
    return target


def _check_positive_duration(key: str, value, timeline: Timeline, alternative: str = "") -> None:
    """A duration that must last at least one optimizer step (durations round to the nearest step)."""
    steps = timeline.steps(value)
    if steps < 1:
        raise ConfigValueError(key, value, f"a duration of at least one step{alternative} (it rounds to {steps} "
                                           f"steps at {timeline.steps_per_epoch} steps per epoch, "
                                           f"{timeline.run_steps or timeline.total_steps} in the run)")


def build_schedule(cfg: DictConfig, timeline: Timeline) -> Schedule | Warmup:
    """The scheduler (and its warmup) of `cfg` over `timeline`; checks the combinations that make no sense."""
    target = _schedule_class(cfg.scheduler._target_)
    total_steps, spe = timeline.total_steps, timeline.steps_per_epoch
    # warmup.length=0 is no warmup (the Optuna preset searches 0% against 5%...), but a length meant to be
    # some warmup that rounds to no step at all is a mistake
    if cfg.warmup._target_ and parse_duration(cfg.warmup.length).amount > 0:
        _check_positive_duration("warmup.length", cfg.warmup.length, timeline, ", or 0 for no warmup")
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
    if warmup_steps and warmup_steps >= total_steps:
        raise ConfigValueError("warmup.length", cfg.warmup.length, f"shorter than the run ({total_steps} steps)")
    extra: dict = {}
    if target.absolute_lrs:
        extra["optimizer_lr"] = cfg.optimizer.lr
    if target.uses_warmup:  # the schedule's own formula ramps over the warmup length
        extra["warmup"], warmup_steps = warmup_steps, 0
    span = Timeline(spe, total_steps - warmup_steps, run_steps=total_steps)  # the schedule's, after warmup
    for key in target.positive_durations:
        if cfg.scheduler.get(key) is not None:
            _check_positive_duration(f"scheduler.{key}", cfg.scheduler[key], span)
    try:  # a custom schedule given keys its __init__ does not take, or missing some
        inspect.signature(target).bind(timeline=span, **extra, **{k: v for k, v in cfg.scheduler.items()
                                                                       if k != "_target_"})
    except TypeError as e:
        raise ConfigValueError("scheduler", target.__name__, f"given the keys {target.__name__}.__init__ takes "
                               f"({e})") from None
    schedule = instantiate(cfg.scheduler, _partial_=True, _convert_="all")(timeline=span, **extra)
    milestones = getattr(schedule, "milestones", None)
    if milestones is not None and any(a >= b for a, b in zip(milestones, milestones[1:])):
        raise ConfigValueError("scheduler.milestones", list(cfg.scheduler.milestones),
                               f"strictly increasing (in {cfg.scheduler.interval}s: {milestones})")
    if isinstance(schedule, Cyclic) and schedule.max_lr <= schedule.base_lr:
        raise ConfigValueError("scheduler.max_lr", cfg.scheduler.max_lr, f"> base_lr ({schedule.base_lr})")
    if warmup_steps:
        schedule = instantiate(cfg.warmup, _partial_=True)(schedule=schedule, length=warmup_steps)
    return schedule
