"""Hyperparameter search on Optuna's ask-and-tell API: what lrtrain's Hydra sweeper does (hydra_plugins/lrtrain_sweeper).

The study lives in Optuna's own storage (SQLite in the sweep dir unless `hydra.sweeper.storage` names another),
so the same command continues it after a crash and several processes, on one machine or many, share it. Each
process claims trials from the study until it holds `n_trials` in total, runs them as jobs of the sweep (in the
sweep dir, one folder per trial number), and tells Optuna how each ended: its best monitored value, pruned (the
job stopped itself, lrtrain/sweep/pruning.py), or failed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shlex
import socket
import threading
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lrtrain.config import validate
from lrtrain.errors import ConfigValueError
from lrtrain.sweep.pruning import ENV, TrialLink, open_storage
from lrtrain.summary import SUCCEEDED as OK, Status
from lrtrain.signals import STOP
from lrtrain.writers import atomic_path

log = logging.getLogger(__name__)

SYNTAX = "interval(a, b), tag(log, interval(a, b)), choice(a, b, ...), range(start, stop[, step]) or a,b,c"
# This process, as recorded on each trial it claims: a later run on this machine fails the RUNNING trials of a
# process that is gone (killed, crashed) and leaves those of live ones alone.
HOST = socket.gethostname()
ORPHAN_AFTER = 60  # seconds: a live worker writes itself on its new trial within milliseconds


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid from the original;
    None for no such process, or a dead one not yet reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, started: Optional[str]) -> bool:
    if Path("/proc").is_dir():
        return _start_time(pid) is not None and (started is None or _start_time(pid) == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


# ------------------------------------------------------------------------------------------- search space


class Dimension:
    """One searched override: the Optuna distribution its values come from, and how a value is written back."""

    def __init__(self, where: str, lhs: str, text: str, distribution: Any, values: Optional[list] = None,
                 texts: Optional[list[str]] = None):
        self.where, self.lhs, self.text = where, lhs, text  # where: the key an error about it names
        self.distribution, self.values = distribution, values
        self.texts = texts  # a choice's values as the override wrote them: [1,2] stays a list, not a string

    def override(self, value: Any) -> str:
        if self.texts is not None and self.values is not None:
            for v, text in zip(self.values, self.texts):
                if type(v) is type(value) and v == value:
                    return f"{self.lhs}={text}"
        return f"{self.lhs}={Transformer.str(value)}"


def parse_space(params: dict[str, str], arguments: Sequence[str]) -> tuple[dict[str, Dimension], dict[str, str]]:
    """The searched dimensions and the fixed overrides, from `hydra.sweeper.params` and the command line (which wins
    for a key given in both), read with Hydra's own override parser."""
    import optuna.distributions as od

    parser = OverridesParser.create()
    space: dict[str, Dimension] = {}
    fixed: dict[str, str] = {}
    lines = [(f"hydra.sweeper.params.{k}", f"{k}={v}") for k, v in params.items()]
    lines += [(line.split("=", 1)[0], line) for line in arguments]
    for where, line in lines:
        text = line.split("=", 1)[1] if "=" in line else ""
        try:
            override = parser.parse_override(line)
        except HydraException:
            raise ConfigValueError(where, text, f"a search space Hydra can parse: {SYNTAX}") from None
        name = override.key_or_group + (f"@{override.package}" if override.package else "")  # no +, ++ or ~
        space.pop(name, None)
        fixed.pop(name, None)
        if not override.is_sweep_override():
            fixed[name] = line
            continue
        lhs = line.split("=", 1)[0].strip()
        try:
            space[name] = Dimension(where, lhs, text, *_distribution(override, od))
        except ValueError as e:
            raise ConfigValueError(where, text, str(e)) from None
    return space, fixed


def _distribution(override: Override, od: Any) -> tuple[Any, ...]:
    """(distribution, its finite values or None[, a choice's values as override text]) for a sweep."""
    value = override.value()
    tags = set(getattr(value, "tags", ()) or ())
    if tags - {"log"}:
        raise ValueError(f"tagged log or not at all, not {', '.join(sorted(tags - {'log'}))}")
    if override.is_interval_sweep():
        low, high = value.start, value.end
        if not low < high:
            raise ValueError("an interval(low, high) with low < high")
        if "log" in tags and low <= 0:
            raise ValueError("an interval with low > 0 on a log scale")
        if isinstance(low, int) and isinstance(high, int):
            return od.IntDistribution(low, high, log="log" in tags), None
        return od.FloatDistribution(float(low), float(high), log="log" in tags), None
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if not values:
        raise ValueError("a range or choice with at least one value")
    if override.is_range_sweep() and not value.shuffle:
        step = abs(value.step)
        low, high = min(values), max(values)
        if "log" in tags:
            raise ValueError("a range without tag(log, ...): range steps are even (use tag(log, interval(a, b)))")
        if all(isinstance(v, int) for v in values):
            return od.IntDistribution(low, high, step=step), values
        return od.FloatDistribution(float(low), float(high), step=float(step)), values
    if "log" in tags:
        raise ValueError("a choice without tag(log, ...): log applies to intervals")
    if len(set(map(repr, values))) < len(values):
        raise ValueError("a choice of distinct values")
    return od.CategoricalDistribution(values), values, list(override.sweep_iterator(transformer=Transformer.str))


def _ends(space: dict[str, Dimension]) -> list[list[str]]:
    """The search space's two corners: every dimension at its low end, then at its high end."""
    corners = []
    for pick in (0, -1):
        point = []
        for dim in space.values():
            d = dim.distribution
            ends = dim.values if dim.values is not None else [d.low, d.high]
            point.append(dim.override(ends[pick]))
        corners.append(point)
    return corners


def check_jobs_compose(config: DictConfig, loader: Any, space: dict[str, Dimension], fixed: dict[str, str]) -> None:
    """Compose and validate a job at each corner of the search space before any trial runs: a key that does not
    exist or a value out of its range fails the search here, naming the key (both sweepers)."""
    for corner in _ends(space):
        cfg = loader.load_sweep_config(config, [*fixed.values(), *corner])
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        validate(cfg)


def seeds_setting(settings: DictConfig, fixed: dict[str, str], space: dict[str, Dimension]) -> int:
    """`hydra.sweeper.seeds`: how many trainer.seed values each trial trains (its value is their mean)."""
    seeds = settings.get("seeds", 1)  # an integer >= 1: OptunaSweeperConfig checked it
    if seeds > 1 and "trainer.seed" in {**fixed, **space}:
        where = "hydra.sweeper.params.trainer.seed" if "trainer.seed" in space else "trainer.seed"
        raise ConfigValueError(where, (space.get("trainer.seed") or fixed.get("trainer.seed")),
                               f"not given with hydra.sweeper.seeds={seeds}, which sets trainer.seed itself "
                               "(from the config's trainer.seed on)")
    return seeds


# ------------------------------------------------------------------------------------------------- study


def _uses_budget(trial: Any) -> bool:
    """Whether a trial is one of the study's n_trials: it ran, or runs now. Trials failed because their process
    died (no `status` told) and claims made past n_trials do not count."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("status") not in (None, "surplus")


def check_installed(sampler_cfg: DictConfig) -> None:
    """Optuna imports a sampler's own package only when it first samples: say what is missing up front."""
    if str(sampler_cfg.get("_target_", "")).endswith("CmaEsSampler"):
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigValueError("hydra/sweeper/sampler", "cmaes", "installed first: pip install "
                                   "'lrtrain[cmaes]' (or uv sync --extra cmaes)") from None


def build_sampler(sampler_cfg: DictConfig, seed: Optional[int], space: dict[str, Dimension]) -> Any:
    """The configured sampler with this seed; a grid sampler gets the grid of the (finite) search space."""
    from hydra.utils import instantiate

    check_installed(sampler_cfg)
    kwargs: dict[str, Any] = {"seed": seed}
    if str(sampler_cfg.get("_target_", "")).endswith("GridSampler"):
        kwargs["search_space"] = grid_of(space)
    return instantiate(sampler_cfg, **kwargs, _convert_="all")


def grid_of(space: dict[str, Dimension]) -> dict[str, list]:
    for dim in space.values():
        if dim.values is None:
            raise ConfigValueError(dim.where, dim.text, "finite with hydra/sweeper/sampler=grid: choice(...), "
                                                        "range(...) or a,b,c")
    return {name: dim.values for name, dim in space.items()}


def suggest(trial: Any, name: str, d: Any) -> Any:
    """Optuna's public suggest_* call for a distribution."""
    kind = type(d).__name__
    if kind == "CategoricalDistribution":
        return trial.suggest_categorical(name, d.choices)
    suggest_number = trial.suggest_int if kind == "IntDistribution" else trial.suggest_float
    return suggest_number(name, d.low, d.high, step=d.step, log=d.log)


def tell(study: Any, trial: Any, state: Any, value: Optional[float] = None) -> None:
    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except RuntimeError as e:  # GridSampler stops "the optimize loop" once the grid is done; there is none
        if "Study.stop" not in str(e):
            raise


def fail_dead_workers(study: Any) -> list[int]:
    """Mark FAIL the RUNNING trials of processes that are gone: on this machine by their pid, elsewhere (RDB
    storages) by Optuna's heartbeat. Their jobs left no result, so they do not count toward n_trials."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    now = datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        # a process killed between asking for a trial and writing itself on it leaves one with neither
        orphan = worker is None and not trial.params and (now - trial.datetime_start).total_seconds() > ORPHAN_AFTER
        if orphan or worker and worker["host"] == HOST and not _alive(worker["pid"], worker.get("started")):
            tell(study, trial.number, TrialState.FAIL)
            failed.append(trial.number)
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(failed + list(running - still))


class Heartbeat:
    """While a batch runs, record its trials as alive (RDB storages): another worker's Optuna `fail_stale_trials`
    then marks them FAIL only if this process stops beating, e.g. on a machine that died."""

    def __init__(self, storage: Any, trial_ids: list[int], interval: Optional[int]):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Heartbeat":
        if self.interval and hasattr(self.storage, "record_heartbeat"):
            self.thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")
            self.thread.start()
        return self

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # a storage hiccup must not end the search; the next beat retries
                    log.warning(f"heartbeat of trial id {trial_id} not recorded: {e}")
            if self.stop.wait(self.interval):
                return

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


class Search:
    """One process's part of a study: claim trials, run them with Hydra's launcher, tell Optuna the results."""

    def __init__(self, settings: DictConfig, config: DictConfig, hydra_context: Any, launcher: Any):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module says what happens, in Hydra's log
        self.config, self.hydra_context, self.launcher = config, hydra_context, launcher
        s = settings  # checked against OptunaSweeperConfig (lrtrain/config.py) by the sweeper's setup
        self.direction = s.direction
        mode = OmegaConf.select(config, "trainer.monitor_mode")
        if mode in ("min", "max") and self.direction != f"{mode}imize":
            raise ConfigValueError("hydra.sweeper.direction", self.direction,
                                   f"{mode}imize with trainer.monitor_mode={mode} (jobs return their best trainer.monitor)")
        self.settings = s
        self.n_trials, self.n_jobs = s.n_trials, s.n_jobs
        self.failed_value = s.failed_value
        self.heartbeat = s.heartbeat_interval
        self.study_name = str(s.study_name)
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.storage_url = _storage_url(s.storage, self.sweep_dir)
        self.params = OmegaConf.to_container(s.params, resolve=True) if s.params else {}
        self.sampler_cfg = s.sampler
        check_installed(self.sampler_cfg)
        self.pruner_cfg = _pruner_config(s.pruner)

    # -------------------------------------------------------------------------------------------- setup

    def _open(self, space: dict[str, Dimension]) -> Any:
        """Create the study, or join it: a process that joins (resumes, or is a second worker) draws its samples
        from a seed of its own, so that workers never propose the same parameters from the same seed."""
        import optuna
        from hydra.utils import instantiate

        seed = OmegaConf.select(self.sampler_cfg, "seed")
        try:
            self.storage = open_storage(self.storage_url, self.heartbeat)
        except Exception as e:
            raise ConfigValueError("hydra.sweeper.storage", self.storage_url,
                                   f"an Optuna storage this process can open ({_first_line(e)})") from None
        pruner = instantiate(self.pruner_cfg, _convert_="all")
        try:
            study = optuna.create_study(storage=self.storage, study_name=self.study_name, direction=self.direction,
                                        sampler=build_sampler(self.sampler_cfg, seed, space), pruner=pruner)
            self.joined = False
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage, pruner=pruner,
                                      sampler=optuna.samplers.RandomSampler())
            if study.direction.name.lower() != self.direction:
                raise ConfigValueError("hydra.sweeper.direction", self.direction,
                                       f"{study.direction.name.lower()}, the direction of study {self.study_name} "
                                       f"in {self.storage_url}") from None
            if seed is not None:  # a seed of its own (logged): workers must not repeat each other's samples
                seed = random.Random(f"{seed}/{HOST}/{os.getpid()}/{len(study.trials)}").randrange(2**31)
            study.sampler = build_sampler(self.sampler_cfg, seed, space)
            self.joined = True
        self.seed = seed
        return study

    def _check_jobs_compose(self, space: dict[str, Dimension], fixed: dict[str, str]) -> None:
        check_jobs_compose(self.config, self.hydra_context.config_loader, space, fixed)

    # ------------------------------------------------------------------------------------------- trials

    @staticmethod
    def _log_dead(numbers: list[int]) -> None:
        if numbers:
            log.info(f"trial{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}: marked failed, "
                     "the process running it is gone (not counted toward n_trials)")

    def _claim(self, study: Any, space: dict[str, Dimension]) -> Optional[Any]:
        """A new trial with sampled parameters, or None when the study already has n_trials. Two workers may ask
        at the same moment for the last one: the trial numbers (Optuna gives them out one by one) decide, and
        the later claim is told FAIL as `surplus` without running."""
        from optuna.trial import TrialState

        if sum(map(_uses_budget, study.get_trials(deepcopy=False))) >= self.n_trials:
            return None
        with warnings.catch_warnings():  # heartbeats are recorded here, by Heartbeat
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            trial = study.ask()
        # first the owner (see fail_dead_workers), then the check, then sampling, which may take seconds (GP)
        trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid(), "started": _start_time(os.getpid())})
        before = sum(_uses_budget(t) for t in study.get_trials(deepcopy=False) if t.number < trial.number)
        if before >= self.n_trials:
            trial.set_user_attr("status", "surplus")
            tell(study, trial, TrialState.FAIL)
            return None
        for name, dim in space.items():
            suggest(trial, name, dim.distribution)
        return trial

    def _job_overrides(self, trial: Any, space: dict[str, Dimension], fixed: dict[str, str]) -> list[list[str]]:
        """The trial's jobs: one, or one per seed (`hydra.sweeper.seeds`), each in a job dir of its own."""
        params = [space[name].override(value) for name, value in trial.params.items()]
        trial.set_user_attr("overrides", [*fixed.values(), *params])
        # Hydra keys, so launchers leave them out of their log lines: one folder per trial (also across resumes
        # and workers), and the job's link to its trial (`_declare_link` made the env_set key exist).
        hidden = []
        if self.pruned:
            link = TrialLink(self.storage_url, self.study_name, trial._trial_id, trial.number,
                             OmegaConf.to_container(self.pruner_cfg, resolve=True))
            # JSON inside Hydra's single quotes: nothing to escape once ' and $ are JSON escapes too
            payload = link.to_env().replace("'", "\\u0027").replace("$", "\\u0024")
            hidden.append(f"hydra.job.env_set.{ENV}='{payload}'")
        if self.seeds == 1:
            return [[*fixed.values(), *params, f"hydra.sweep.subdir={trial.number}", *hidden]]
        base = int(self.config.trainer.seed)
        return [[*fixed.values(), *params, f"trainer.seed={base + k}", f"hydra.sweep.subdir={trial.number}/{k}",
                 *hidden] for k in range(self.seeds)]

    def _declare_link(self) -> None:
        """Add the env_set key for the trial link to the Hydra overrides every job is composed with, so that a
        job's own override of it needs no `++` (which launchers would print in full)."""
        with read_write(self.config.hydra.overrides):
            self.config.hydra.overrides.hydra.append(f"++hydra.job.env_set.{ENV}=''")

    def _tell_result(self, study: Any, trial: Any, rets: list[JobReturn]) -> str:
        """Tell Optuna how the trial's jobs ended: the mean of their values when every one succeeded (one job
        without `hydra.sweeper.seeds`), else the first job's status that is not a success."""
        from optuna.trial import TrialState

        ends = [self._job_end(ret) for ret in rets]
        run_dirs = [str(d) for _, _, d, _ in ends if d]
        if run_dirs:
            trial.set_user_attr("run_dir", run_dirs[0] if len(rets) == 1 else str(Path(run_dirs[0]).parent))
        status, value, _, cause = next(((s, v, d, c) for s, v, d, c in ends if s not in OK), ends[0])
        if status in OK:
            values = [v for _, v, _, _ in ends]
            value = sum(values) / len(values)
            if len(values) > 1:
                trial.set_user_attr("seed_values", values)
        trial.set_user_attr("status", str(status))
        if cause:
            trial.set_user_attr("cause", cause)
        if status in OK:
            tell(study, trial, TrialState.COMPLETE, float(value))
        elif status == Status.PRUNED:
            tell(study, trial, TrialState.PRUNED)  # Optuna keeps the last reported value as its value
        elif self.failed_value is not None and status != Status.INTERRUPTED:
            tell(study, trial, TrialState.COMPLETE, float(self.failed_value))
        else:
            tell(study, trial, TrialState.FAIL)
        seeds = f" (mean of {len(rets)} seeds)" if len(rets) > 1 and status in OK else ""
        shown = f" {value:.4g}{seeds}" if status in OK else f": {cause or ''}"
        return f"trial {trial.number} {status}{shown}"

    @staticmethod
    def _job_end(ret: JobReturn) -> tuple[Status, Any, Optional[Path], Optional[str]]:
        """(status, value, run dir, cause) of one job, from its summary.json and what it returned."""
        run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else None
        summary = _read_json(run_dir / "summary.json") if run_dir else {}
        status = summary.get("status") or (Status.FAILED if ret.status == JobStatus.FAILED else Status.INTERRUPTED)
        value = ret._return_value if ret.status == JobStatus.COMPLETED else None
        cause = summary.get("stop_reason")
        if status in OK and not (isinstance(value, (int, float)) and math.isfinite(value)):
            status, cause = Status.FAILED, f"the job returned {value!r}, not a number"
        return Status(status) if status in set(Status) else status, value, run_dir, cause

    # ------------------------------------------------------------------------------------------------ run

    def run(self, arguments: list[str]) -> None:
        space, fixed = parse_space(self.params, arguments)
        if not space:
            raise ConfigValueError("hydra.sweeper.params", self.params or {},
                                   f"a search space with at least one dimension: {SYNTAX}")
        self.pruned = self.pruner_cfg.get("_target_") != "optuna.pruners.NopPruner"
        self.seeds = seeds_setting(self.settings, fixed, space)
        if self.seeds > 1 and self.pruned:  # a pruner takes one value per validation, seeds would give several
            raise ConfigValueError("hydra.sweeper.seeds", self.seeds, "1 with a pruner (hydra.sweeper.pruner="
                                   f"{self.pruner_cfg.get('_target_', '').rsplit('.', 1)[-1]}), or seeds>1 with "
                                   "hydra/sweeper/pruner=none")
        if self.pruned:
            self._declare_link()
        if str(self.sampler_cfg.get("_target_", "")).endswith("GridSampler"):
            self.n_trials = min(self.n_trials, math.prod(map(len, grid_of(space).values())))  # each point once
        self._check_jobs_compose(space, fixed)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study = self._open(space)
        self._log_dead(fail_dead_workers(study))
        done = sum(map(_uses_budget, study.trials))
        log.info(f"Optuna study {self.study_name} in {self.storage_url}: {len(study.trials)} trials so far, "
                 f"{done} of n_trials={self.n_trials} taken; sampler {type(study.sampler).__name__} "
                 f"(seed {self.seed}{', its own: joined an existing study' if self.joined else ''}), "
                 f"pruner {type(study.pruner).__name__}")
        job_idx = 0
        while True:
            self._log_dead(fail_dead_workers(study))
            batch = []
            while len(batch) < self.n_jobs:
                trial = self._claim(study, space)
                if trial is None:
                    break
                batch.append(trial)
            if not batch:
                break
            jobs = [self._job_overrides(t, space, fixed) for t in batch]
            overrides = [job for trial_jobs in jobs for job in trial_jobs]
            with Heartbeat(self.storage, [t._trial_id for t in batch], self.heartbeat):
                try:
                    returns = self.launcher.launch(overrides, initial_job_idx=job_idx)
                except BaseException:
                    from optuna.trial import TrialState

                    for trial in batch:  # interrupted (Ctrl-C, a launcher error): no result, not counted
                        tell(study, trial, TrialState.FAIL)
                    raise
            job_idx += len(returns)
            for trial, trial_jobs in zip(batch, jobs):
                log.info(self._tell_result(study, trial, returns[:len(trial_jobs)]))
                returns = returns[len(trial_jobs):]
            if STOP:  # SIGINT/SIGTERM: no more trials; the results so far and the report are written
                log.info(f"Optuna search interrupted by {STOP.name}: no more trials are started")
                break
        self._write_results(study)

    def _write_results(self, study: Any) -> None:
        from optuna.trial import TrialState

        counts = {s.name: n for s in TrialState if (n := sum(t.state == s for t in study.trials))}
        results: dict[str, Any] = {"name": "optuna", "study_name": self.study_name, "storage": self.storage_url,
                                   "trials": counts}
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if complete:
            best = study.best_trial
            overrides = best.user_attrs.get("overrides") or []
            run_alone = ["lrtrain", *overrides]
            if self.config.hydra.mode is not None and self.config.hydra.mode.name == "MULTIRUN":
                run_alone.append("hydra.mode=RUN")  # a preset such as hparams_search=optuna switched it on
            command = " ".join(map(shlex.quote, run_alone))
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value,
                           best_run_dir=best.user_attrs.get("run_dir"), command=command)
            log.info(f"Best trial {best.number} of {len(study.trials)}: value {best.value:.6g}, "
                     f"{best.user_attrs.get('run_dir')}")
            log.info(f"Run it alone: {command}")
        else:
            log.warning("No trial of the study has completed: no best parameters yet")
        out = self.sweep_dir / "optimization_results.yaml"
        with atomic_path(out) as tmp:
            OmegaConf.save(OmegaConf.create(results), tmp)
        log.info(f"Dashboard: optuna-dashboard {shlex.quote(self.storage_url)}")


def _storage_url(storage: Optional[str], sweep_dir: Path) -> str:
    """An absolute location every job (and every worker started from another directory) resolves the same way."""
    if storage is None:
        return f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
    storage = str(storage)
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        path = storage[len("sqlite:///"):]
        if path and path != ":memory:":
            return f"sqlite:///{Path(path).expanduser().resolve()}"
    if storage in ("sqlite://", "sqlite:///:memory:"):
        raise ConfigValueError("hydra.sweeper.storage", storage, "a storage jobs can reach: a file or a server, "
                                                                  "not an in-memory database")
    if "://" not in storage:
        return str(Path(storage).expanduser().resolve())
    return storage


def _pruner_config(pruner: Any) -> DictConfig:
    """`hydra/sweeper/pruner=<name>` gives a config node; `hydra.sweeper.pruner=<name>` a name: read its file."""
    if isinstance(pruner, DictConfig):
        return pruner
    from lrtrain.paths import config_dir

    options = sorted(p.stem for p in (Path(config_dir()) / "hydra" / "sweeper" / "pruner").glob("*.yaml"))
    if pruner not in options:
        raise ConfigValueError("hydra.sweeper.pruner", pruner, "one of " + ", ".join(options))
    return OmegaConf.load(Path(config_dir()) / "hydra" / "sweeper" / "pruner" / f"{pruner}.yaml")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
