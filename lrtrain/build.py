"""build(cfg): the one place that reads the config and turns it into plain objects for the loop."""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lrtrain.averaging import Averager, averaged_metrics
from lrtrain.build_schedule import build_schedule
from lrtrain.checkpoints import check_layout, load
from lrtrain.config import TrainerConfig
from lrtrain.data import FolderData, TensorData, TextData
from lrtrain.durations import Timeline
from lrtrain.errors import (CheckpointError, ConfigValueError, DataError, FlipError, ModelInputError,
                            OptimizerInputError)
from lrtrain.loggers import CSVLogger, Sink
from lrtrain.lr_find import LRFinder
from lrtrain.optimizers import has_modes, make_optimizer, momentum_key, param_groups
from lrtrain.position import Position, seed_everything
from lrtrain.progress import ProgressDisplay
from lrtrain.sweep.pruning import TrialLink
from lrtrain.regularization import BatchAugment, GradClip, L1Penalty, StepHooks
from lrtrain.run import Run
from lrtrain.tasks import task_for

if TYPE_CHECKING:
    from lrtrain.coord_check import CoordCheck


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


_loaded: dict[str, TensorData] = {}


def load_data(node: DictConfig) -> TensorData | FolderData | TextData:
    """The data set a config names. The jobs of a sequential sweep share one in-memory copy (the loop only
    reads it), loaded again only when the dataset config changes other than in its batch sizes."""
    batches = ("batch_size", "eval_batch_size")
    key = OmegaConf.to_yaml({k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
                             if k not in batches})
    if key in _loaded:
        return replace(_loaded[key], batch_size=node.batch_size, eval_batch_size=node.eval_batch_size)
    try:
        data = instantiate(node, _convert_="all")
    except InstantiationException as e:
        if isinstance(e.__cause__, DataError):  # its own one-line message names the root and the files
            raise e.__cause__ from None
        raise
    _loaded.clear()  # keep one data set in memory, not one per configuration seen
    if isinstance(data, (TensorData, TextData)):  # a folder's DataLoaders belong to their batch size: not shared
        _loaded[key] = data
    return data


def build_lr_finder(cfg: DictConfig) -> LRFinder:
    return instantiate(cfg.lr_find, _convert_="all")


def build_coord_check(cfg: DictConfig, out_dir: Path) -> "CoordCheck":
    """mode=coord_check: the widths, steps and seeds, and what builds the configured run at a width and seed."""
    from lrtrain.config import CoordCheckConfig, validate
    from lrtrain.coord_check import CoordCheck
    from lrtrain.parametrization import WIDTH_KEYS

    settings: CoordCheckConfig = OmegaConf.to_object(cfg.coord_check)
    key = WIDTH_KEYS.get(cfg.model._target_)
    if key is None:
        raise ConfigValueError("model", _option(cfg.model).lower(),
                               "mlp or gpt with mode=coord_check (the models with a width to vary)")
    if key == "n_embd" and any(w % cfg.model.n_head for w in settings.widths):
        raise ConfigValueError("coord_check.widths", settings.widths,
                               f"multiples of model.n_head ({cfg.model.n_head}) for model=gpt")

    def make_run(width: int, seed: int) -> Run:
        job = cfg.copy()
        job.model[key] = [width] * len(cfg.model.hidden) if key == "hidden" else width
        job.trainer.seed = seed
        validate(job)
        return build(job, out_dir)

    title = (f"{_option(cfg.model).lower()}, {cfg.model.parametrization}, {_option(cfg.optimizer)} "
             f"lr={cfg.optimizer.lr:g}")
    return CoordCheck(settings.widths, settings.steps, settings.seeds, make_run, out_dir, title)


def build(cfg: DictConfig, out_dir: Path, sweep_dir: Optional[Path] = None, job_num: Optional[int] = None,
          fork: Optional[dict] = None) -> Run:
    """The run `cfg` describes, writing into `out_dir` (a job of the sweep in `sweep_dir`, when given; a cooldown
    fork with the lineage `fork`, when given: lrtrain.forks composed its `cfg`)."""
    trainer: TrainerConfig = OmegaConf.to_object(cfg.trainer)
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    device = resolve_device(trainer.device)
    seed_everything(trainer.seed)

    dist = None
    if trainer.strategy == "ddp":
        from lrtrain.distributed import Dist

        dist = Dist.start(device)
        device = dist.device
        out_dir = Path(dist.from_main(str(out_dir)))  # rank 0's run dir: resume reads it, only rank 0 writes
    data = load_data(cfg.dataset).to(device)
    world = dist.world_size if dist else 1
    if dist and not isinstance(data, (TensorData, TextData)):
        raise ConfigValueError("trainer.strategy", "ddp", f"single with {data.name} (ddp shards in-memory data sets)")
    if dist and (cfg.mode == "lr_find" or cfg.optimizer.lr == "auto"):
        raise ConfigValueError("trainer.strategy", "ddp", "single for the LR range test (run it once, then "
                                                          "train under ddp with the LR it suggests)")
    # under ddp one optimizer step takes batch_size samples on each rank: a global batch of batch_size x world
    steps_per_epoch = math.ceil(len(data.train) / (data.batch_size * world))
    # max_steps, when set, is the run's length; otherwise max_epochs is.
    total_steps = trainer.max_steps or trainer.max_epochs * steps_per_epoch
    timeline = Timeline(steps_per_epoch, total_steps)

    reg = cfg.regularization
    if reg.label_smoothing is not None and data.num_classes is None:
        raise ConfigValueError("regularization", "label_smoothing",
                               f"a list without label_smoothing: {data.name} is a regression data set")
    task = task_for(data.num_classes, reg.label_smoothing.epsilon if reg.label_smoothing is not None else 0.0,
                    block_size=data.block_size if data.kind == "text" else None)
    metrics = task.row_metrics()
    if cfg.averaging.kind != "none":
        metrics += averaged_metrics(metrics)
    _check_logged("trainer.monitor", trainer.monitor, metrics)

    model_kwargs = {"dropout": reg.dropout.p} if reg.dropout is not None else {}
    if model_kwargs and "dropout" not in inspect.signature(get_object(cfg.model._target_)).parameters:
        raise ConfigValueError("regularization", "dropout", f"a list without dropout: {cfg.model._target_} "
                                                           "has no dropout")
    _check_inputs(cfg.model._target_, data)
    _check_model_fits(cfg.model, data, device)
    try:
        model = instantiate(cfg.model, input_shape=data.input_shape, num_outputs=data.num_classes or 1,
                            **model_kwargs, _convert_="all").to(device)
    except InstantiationException as e:
        if isinstance(e.__cause__, ModelInputError):  # e.g. model=cnn on dataset=regression
            raise ConfigValueError("model", cfg.model._target_.rsplit(".", 1)[-1].lower(),
                                   f"a model for {data.name}'s inputs: {e.__cause__}") from None
        raise
    weight_decay = reg.l2.weight_decay if reg.l2 is not None else 0.0
    groups = param_groups(model, weight_decay, decay_1d=reg.l2.decay_1d if reg.l2 is not None else False)
    # Config nodes become partials completed with live objects, so Hydra never converts those objects.
    # lr=auto: the LR range test (lrtrain.lr_find) sets the LR before training; until then, any number will do.
    auto_lr = {"lr": cfg.lr_find.min_lr} if cfg.optimizer.lr == "auto" else {}
    factory = instantiate(cfg.optimizer, _partial_=True, _convert_="all", **auto_lr)
    if hasattr(model, "mup_dims"):  # model.parametrization=mup: μP's per-parameter LRs as groups' base LRs
        groups = _mup_groups(model, groups, factory, cfg)
    try:
        optimizer = make_optimizer(factory, groups, decoupled=reg.l2 is not None and reg.l2.decoupled)
    except OptimizerInputError as e:  # e.g. optimizer=muon on model=linear
        raise ConfigValueError("optimizer", _option(cfg.optimizer), f"an optimizer for this model: {e}") from None
    if dist and trainer.scale_lr_with_world_size:  # the linear scaling rule: LR x world size
        for group in optimizer.param_groups:
            group["lr"] *= world
    hooks = _step_hooks(reg, model, data)

    _check_logged("scheduler.monitor", cfg.scheduler.get("monitor"), metrics)
    schedule = build_schedule(cfg, timeline)
    _check_momentum_cycling(schedule, optimizer, cfg)

    stopper = instantiate(cfg.early_stopping, _convert_="all")
    _check_logged("early_stopping.monitor", stopper.monitor, metrics)

    config = OmegaConf.to_container(cfg, resolve=True)
    resume, in_place = None, False
    if trainer.resume:
        path = _resume_path(trainer.resume, out_dir)
        if path is not None:
            resume = load(path)
            check_layout(path, resume, {f.name for f in fields(Position)})
            # before the model's shapes, which a vocabulary of another size changes: this says why
            if isinstance(data, TextData) and "vocabulary" in resume and resume["vocabulary"] != data.vocabulary:
                raise CheckpointError(f"{path}: made with another vocabulary than this text's "
                                      f"({_symbols(resume['vocabulary'])} there, {_symbols(data.vocabulary)} "
                                      "here): its token ids would mean other characters")
            check_compatible(path, resume, config, model)
            in_place = path.resolve().parent.parent == out_dir.resolve()
    sinks: list[Sink] = []
    pruning, pbt = None, None
    if dist is None or dist.main:  # rank 0 alone writes outputs
        epochs = math.ceil(total_steps / steps_per_epoch)
        link = TrialLink.from_environment()  # set by lrtrain's Optuna sweeper for the jobs of a pruned study
        if link is not None:
            val_steps = timeline.every(trainer.val_every)
            pruning = link.connect(trainer.monitor, math.ceil(total_steps / val_steps), val_steps == steps_per_epoch)
        ray_link = _ray_link()  # set by lrtrain's Ray Tune sweeper for its jobs
        if ray_link is not None:
            pruning = ray_link
            ray_link.validations = math.ceil(total_steps / timeline.every(trainer.val_every))
            if ray_link.restore is not None:  # PBT's exploit: continue from another trial's checkpoint, in place
                path = Path(ray_link.restore)
                resume = load(path)
                check_layout(path, resume, {f.name for f in fields(Position)})
                check_compatible(path, resume, config, model)
                in_place = True
            if ray_link.values:
                from lrtrain.sweep.ray_tune import pbt_state

                pbt = pbt_state(ray_link, optimizer, config, out_dir,
                                resume["step"] if ray_link.restore is not None else None)
        sinks = [*build_loggers(cfg.logger),
                 ProgressDisplay(trainer.progress, total_steps, epochs, data.batch_size * world)]
    averaging = None
    if cfg.averaging.kind != "none":
        averaging = Averager(model, cfg.averaging.kind, timeline.steps(cfg.averaging.start), cfg.averaging.every,
                             cfg.averaging.get("decay"))
    # step 0 is the start, not a point of training; steps past the end never come (an extending resume builds again)
    save_at = frozenset(s for s in map(timeline.steps, trainer.save_at) if 0 < s <= total_steps)
    return Run(model=model, optimizer=optimizer, schedule=schedule, data=data, task=task, hooks=hooks,
               stopper=stopper, sinks=sinks, settings=trainer, device=device, timeline=timeline, out_dir=out_dir,
               config=config, resume=resume, resumed_in_place=in_place, dist=dist, sweep_dir=sweep_dir,
               job_num=job_num, pruning=pruning, save_at=save_at, fork=fork,
               averaging=averaging, pbt=pbt)


def _ray_link():
    """The job's link to its Ray Tune trial, if it is one (imported only then: the module is the sweeper's)."""
    import os

    from lrtrain.sweep.ray_tune import ENV, RayLink

    return RayLink.from_environment() if os.environ.get(ENV) else None


def build_loggers(nodes: DictConfig) -> list[Sink]:
    """The `logger` group's sinks, the CSV logger first (the outputs contract: always written, with curves.png
    only when `csv` is listed). Each logger checks its own keys, named here as `logger.<name>.<key>`."""
    loggers: list[Sink] = [] if "csv" in nodes else [CSVLogger(plots=False)]
    for name in sorted(nodes, key=lambda n: n != "csv"):
        node = nodes[name]
        cls = get_object(node._target_)
        accepted = inspect.signature(cls).parameters
        for key in node:
            if key != "_target_" and key not in accepted:
                raise ConfigValueError(f"logger.{name}.{key}", node[key],
                                       f"a key of the {name} logger ({', '.join(accepted) or 'none'})")
        try:
            kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
            loggers.append(cls(**kwargs))
        except ConfigValueError as e:
            raise e.under(f"logger.{name}") from None
    return loggers


def _mup_groups(model: nn.Module, groups: list[dict], factory, cfg: DictConfig) -> list[dict]:
    from lrtrain.parametrization import SUPPORTED, mup_groups, rule_for

    rule = rule_for(factory)
    if rule is None:
        raise ConfigValueError("optimizer", _option(cfg.optimizer).lower(),
                               f"one of {SUPPORTED} with model.parametrization=mup (the optimizers whose μP "
                               "learning-rate rule is known)")
    return mup_groups(model, groups, factory.keywords["lr"], rule)


def _option(node: DictConfig) -> str:
    return node._target_.rsplit(".", 1)[-1]


def _check_momentum_cycling(schedule, optimizer, cfg: DictConfig) -> None:
    """A schedule that cycles momentum needs an optimizer with momentum or beta1 (torch says the same), and
    not a schedule-free one, whose train/eval switch needs the beta1 (momentum) it interpolated with."""
    if schedule.momentum(0) is None:
        return
    if any(momentum_key(g) is None for g in optimizer.param_groups):
        raise ConfigValueError("scheduler.cycle_momentum", True, f"false with optimizer {_option(cfg.optimizer)}, "
                               "which has neither momentum nor beta1")
    if has_modes(optimizer):
        raise ConfigValueError("scheduler.cycle_momentum", True, "false with a schedule-free optimizer (its "
                               "train/eval switch undoes the interpolation with the momentum it was made with)")


def _symbols(vocabulary: Optional[str]) -> str:
    return "256 bytes" if vocabulary is None else f"{len(vocabulary)} characters"


def _check_inputs(target: str, data) -> None:
    """Token ids (the text data sets) go to a model that embeds them, and only there."""
    tokens = getattr(get_object(target), "takes_tokens", False)
    if tokens != (data.kind == "text"):
        name = target.rsplit(".", 1)[-1].lower()
        why = (f"{name} reads token ids (dataset=text or shakespeare)" if tokens
               else f"{data.name} is token ids, which only model=gpt reads")
        raise ConfigValueError("model", name, f"a model for {data.name}'s inputs: {why}")


def _check_logged(key: str, metric: str | None, metrics: list[str]) -> None:
    """A monitored metric (when one is set) must be one the run logs."""
    if metric is not None and metric not in metrics:
        raise ConfigValueError(key, metric, "one of " + ", ".join(metrics))


def _resume_path(resume: str, out_dir: Path) -> Path | None:
    """The checkpoint `trainer.resume` names; None for `auto` when this run dir has none yet."""
    if resume == "auto":
        path = out_dir / "checkpoints" / "last.pt"
        return path if path.is_file() else None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"trainer.resume={resume}: no checkpoint at {path} "
                              "(give a run dir, a .pt file, or auto)")
    return path


# Sections that must match for a checkpoint to continue here; everything else may change on resume
# (max_epochs/max_steps to extend a run, logging, the LR and schedule at your own risk).
_MUST_MATCH = {"model": (), "dataset": ("root", "download", "eval_batch_size")}


def check_compatible(path: Path, ckpt: dict, config: dict, model: nn.Module) -> None:
    """Refuse a checkpoint made with another model or data set, saying what differs."""
    saved = ckpt.get("config") or {}
    for section, free in _MUST_MATCH.items():
        old, new = saved.get(section, {}), config.get(section, {})
        if section == "model" and "parametrization" not in old and new.get("parametrization") == "sp":
            free = (*free, "parametrization", "base_width")  # made before μP was an option: SP, as this run
        for key in sorted(set(old) | set(new)):
            if key not in free and old.get(key) != new.get(key):
                raise CheckpointError(f"{path}: made with {section}.{key}={old.get(key)!r}, this run has "
                                      f"{section}.{key}={new.get(key)!r}; resume with the same {section}")
    if saved.get("optimizer", {}).get("_target_") != config["optimizer"]["_target_"]:
        raise CheckpointError(f"{path}: made with optimizer {saved.get('optimizer', {}).get('_target_')}, "
                              f"this run has {config['optimizer']['_target_']}")
    mine = model.state_dict()
    theirs = ckpt["model"]
    for key in sorted(set(mine) | set(theirs)):
        a, b = theirs.get(key), mine.get(key)
        if a is None or b is None or a.shape != b.shape:
            where = "missing" if a is None else f"shape {list(a.shape)}"
            here = "missing" if b is None else f"shape {list(b.shape)}"
            raise CheckpointError(f"{path}: model parameter {key} is {where} in the checkpoint, {here} here")


def _check_model_fits(node: DictConfig, data, device: torch.device) -> None:
    """Refuse a model whose parameters and their gradients alone (4 bytes each) exceed the memory available,
    estimated from the config before anything is built: building it would take minutes of allocation (a ViT
    of 10^8 blocks grew by 120 MB/s) until the out-of-memory killer ended it."""
    from lrtrain.models import SIZES, parameter_count

    settings = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    try:
        count = parameter_count(node._target_, data.input_shape, data.num_classes or 1, **settings)
    except (TypeError, ModelInputError):  # settings or inputs the model itself will refuse in its own words
        return
    available = _available_memory(device)
    if count is None or available is None or 2 * 4 * count <= available:
        return
    keys = ", ".join(f"model.{k}={settings[k]}" for k in SIZES[node._target_][1] if k in settings)
    raise ConfigValueError("model", node._target_.rsplit(".", 1)[-1].lower(),
                           f"a model that fits in memory: {keys + ' gives ' if keys else ''}about {count:.3g} "
                           f"parameters, whose weights and gradients alone take {_bytes(8 * count)}, and "
                           f"{device.type} has {_bytes(available)} available; make it smaller")


def _available_memory(device: torch.device) -> Optional[int]:
    """Bytes free on `device`: the GPU's free memory, or for the CPU the host's available memory (and this
    container's limit, when lower); None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        meminfo = Path("/proc/meminfo").read_text()
        free = int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M).group(1)) * 1024
    except (OSError, AttributeError):
        return None
    try:  # cgroup v2: the container's limit less what it uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"


def _step_hooks(reg: DictConfig, model: nn.Module, data) -> StepHooks:
    """What regularization adds to the training step; each hook is None when its option is off."""
    params = [p for p in model.parameters() if p.requires_grad]
    augment = None
    if reg.augment is not None:
        if data.kind in ("tabular", "text"):
            raise ConfigValueError("regularization", "augment",
                                   f"a list without augment: {data.name} is not an image data set")
        try:
            augment = BatchAugment(data.kind, data.input_shape, reg.augment.max_shift, reg.augment.flip,
                                   reg.augment.rotation)
        except FlipError:
            raise ConfigValueError("regularization.augment.flip", reg.augment.flip,
                                   f"null or 0 for {data.name}: digits and other glyphs are never flipped "
                                   "(a mirrored 7 is not a 7)") from None
    return StepHooks(
        augment=augment,
        penalty=L1Penalty(params, reg.l1.coefficient) if reg.l1 is not None else None,
        clip=GradClip(params, reg.grad_clip.max_norm, reg.grad_clip.value) if reg.grad_clip is not None else None,
    )
