"""Cooldown forks: a new run that continues a `scheduler=constant` run from one of the checkpoints it kept
(`trainer.save_at`) and decays the LR to `fork.min_lr` over `fork.cooldown` with `fork.shape`.

A fork at step S with cooldown D *is* the `scheduler=wsd` run of S + D steps whose decay of D steps starts at S,
started from the parent's state at S instead of from scratch. So its config is composed by Hydra from the
parent's overrides, this command's overrides, and the few that make it that wsd run (the schedule, the length,
the warmup in steps, the checkpoint to resume from); its LRs come from `WSD` itself, and its rows equal that wsd
run's from step S + 1 on, bit for bit on the CPU (tests/test_forks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lrtrain.errors import CheckpointError, ConfigValueError

# What the fork sets itself: a parent's overrides of these are dropped, and this command may not set them.
_FIXED = ("scheduler", "warmup.length", "trainer.max_steps", "trainer.max_epochs", "trainer.resume")


def _key(override: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    o = OverridesParser.create().parse_override(override)
    return o.key_or_group + (f"@{o.package}" if o.package else "")


def _under(key: str, roots: tuple[str, ...]) -> bool:
    return any(key == root or key.startswith(root + ".") for root in roots)


def _compose(overrides: list[str]) -> DictConfig:
    """The config Hydra composes from `overrides` (inside the running app: its config path and schemas)."""
    from hydra import compose

    return compose(config_name="config", overrides=overrides)


def fork_config(cfg: DictConfig, out_dir: Path) -> tuple[DictConfig, dict[str, Any]]:
    """The config of the fork `cfg.fork` asks for, and its lineage for summary.json. Refuses (one line) a parent
    that is not a run dir, not constant, without a checkpoint at fork.at, or this run's own dir."""
    import yaml
    from hydra.core.hydra_config import HydraConfig

    from lrtrain.build import load_data
    from lrtrain.build_schedule import build_schedule
    from lrtrain.config import validate
    from lrtrain.durations import Timeline, parse_duration
    from lrtrain.position import kept_name, kept_steps
    from lrtrain.schedules import Constant
    from lrtrain.warmup import Warmup

    fork = cfg.fork
    parent = Path(fork["from"]).expanduser()
    overrides_file = parent / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file() or not (parent / "checkpoints").is_dir():
        raise ConfigValueError("fork.from", fork["from"], "a run dir with .hydra/overrides.yaml and checkpoints/ "
                                                          "(a run with trainer.save_at)")
    if parent.resolve() == out_dir.resolve():
        raise ConfigValueError("fork.from", fork["from"], "another run's dir: a fork writes into a dir of its own")
    inherited = yaml.safe_load(overrides_file.read_text()) or []

    parent_cfg = _compose(inherited)
    validate(parent_cfg)
    data = load_data(parent_cfg.dataset)  # build takes it from the same cache
    spe = -(-len(data.train) // data.batch_size)
    timeline = Timeline(spe, parent_cfg.trainer.max_steps or parent_cfg.trainer.max_epochs * spe)
    schedule = build_schedule(parent_cfg, timeline)
    inner = schedule.schedule if isinstance(schedule, Warmup) else schedule
    kept = kept_steps(parent / "checkpoints")
    have = f"it kept checkpoints at steps {', '.join(map(str, kept))}" if kept else "it kept no checkpoints"
    if type(inner) is not Constant:
        raise ConfigValueError("fork.from", fork["from"], f"a scheduler=constant run (it ran "
                               f"{parent_cfg.scheduler._target_.rsplit('.', 1)[-1]}; {have})")
    at = timeline.steps(fork.at)
    warmup = schedule.length if isinstance(schedule, Warmup) else 0
    if at < warmup:
        raise ConfigValueError("fork.at", fork.at, f"at or after the parent's warmup ({warmup} steps): the LR "
                               f"decays from the constant one")
    ckpt = parent / "checkpoints" / kept_name(at)
    if not ckpt.is_file():
        raise ConfigValueError("fork.at", fork.at, f"a step of {parent} with a checkpoint ({at} has none; {have})")
    cooldown = parse_duration(fork.cooldown)
    length = (round(cooldown.amount / 100 * at) if cooldown.unit == "%" else Timeline(spe, at).steps(cooldown))
    if length < 1:
        raise ConfigValueError("fork.cooldown", fork.cooldown, f"at least one step (it rounds to {length} at step {at})")

    own = list(HydraConfig.get().overrides.task)
    clash = [o for o in own if _under(_key(o), _FIXED)]
    if clash:
        raise ConfigValueError("fork", clash[0], "a fork's own keys: its schedule is fork.cooldown, fork.shape and "
                               "fork.min_lr, its length fork.at + fork.cooldown")
    total = at + length
    # WSD decays over round(decay_fraction * total) steps, which is `length` for this fraction.
    derived = ["scheduler=wsd", f"scheduler.decay_fraction={length / total!r}", f"scheduler.decay_type={fork.shape}",
               f"scheduler.min_lr={float(fork.min_lr)!r}", f"trainer.max_steps={total}", f"trainer.resume={ckpt}"]
    if warmup:  # in steps: a % of the parent's run is not the same % of the fork's
        derived.append(f"warmup.length={warmup}steps")
    chosen: dict[str, str] = {}
    for o in [*(o for o in inherited if not _under(_key(o), _FIXED)), "trainer.save_at=[]", *own, *derived]:
        chosen[_key(o)] = o  # later ones win; each key once (Hydra refuses a group chosen twice)
    fork_cfg = _compose(list(chosen.values()))
    if fork_cfg.trainer.seed != parent_cfg.trainer.seed:
        raise CheckpointError(f"{ckpt}: made with trainer.seed={parent_cfg.trainer.seed}, this fork has "
                              f"trainer.seed={fork_cfg.trainer.seed}; a fork continues its parent's seed")
    _write_config(fork_cfg, out_dir)
    lineage = {"parent": str(parent.resolve()), "step": at, "cooldown": length, "shape": fork.shape,
               "min_lr": float(fork.min_lr), "checkpoint": str(ckpt.resolve())}
    return fork_cfg, lineage


def _write_config(cfg: DictConfig, out_dir: Path) -> None:
    """The fork's .hydra/config.yaml says what it ran (Hydra wrote the config of this command's overrides alone)."""
    from lrtrain.writers import atomic_path

    path = out_dir / ".hydra" / "config.yaml"
    if path.parent.is_dir():
        with atomic_path(path) as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg))
