"""Hyperparameter search on Ray Tune: what lrtrain's Ray Tune sweeper does (hydra_plugins/lrtrain_ray).

The driver (`RaySearch`, in the `lrtrain` process) maps the search space, written in the Optuna sweeper's override
syntax and read with its parser, to Tune's domains, and runs a `Tuner` on a local Ray or an existing cluster.
Each trial (`trial`, in a Ray worker) runs its job as an ordinary lrtrain job of the sweep, in a process of its
own (`python -m lrtrain.sweep.ray_job`, as Hydra's joblib launcher runs a job): Hydra writes `.hydra/`, the job
claims `<sweep dir>/<trial>/` under the run-dir rules (lrtrain.rundir.job_state), and the job's loop hands every
validation to the trial through a pipe (`RayLink`, read in lrtrain.build). The trial reports it to Tune with
the job's `last.pt` as the checkpoint, and tells the job to stop when Tune stops the trial: ASHA's stop ends the
job `pruned`, PBT's pause (to exploit another trial) ends it `interrupted`, and the trial, started again, continues
the same job dir from the donor's checkpoint with the perturbed values (`PBTState`).

Ray is imported only here and only when a search runs: a plain `lrtrain` start never pays for it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from lrtrain.errors import ConfigValueError
from lrtrain.summary import SUCCEEDED, Status

log = logging.getLogger(__name__)

ENV = "LRTRAIN_RAY_TRIAL"  # a job's link to its trial (RayLink): the pipes' file descriptors and what to restore
INSTALL = "pip install 'lrtrain[ray]' (or uv sync --extra ray)"
EXPERIMENT = "ray_tune"  # Tune's experiment folder in the sweep dir: its state (a re-run restores it) and results
INTERRUPTED = ".lrtrain-interrupted"  # in the experiment folder while a signal ends the search: trials stop as such


# ------------------------------------------------------------------------------------------------ settings


def import_ray() -> Any:
    """Ray, or a one-line ConfigValueError saying how to install it."""
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise ConfigValueError("hydra/sweeper", "ray_tune", f"installed first: {INSTALL}") from None
    return ray


# ------------------------------------------------------------------------------------------- search space


def tune_domain(dim: Any) -> Any:
    """Tune's search domain for one dimension of lrtrain's search space (lrtrain.sweep.search.Dimension)."""
    from ray import tune

    d, kind = dim.distribution, type(dim.distribution).__name__
    if kind == "CategoricalDistribution":
        return tune.choice(list(d.choices))
    if kind == "IntDistribution" and d.step == 1:
        if d.log:
            return tune.lograndint(d.low, d.high + 1)  # Tune's integer upper bounds are exclusive
        return tune.randint(d.low, d.high + 1)
    if d.step is not None:  # a range: Tune's q-domains round to multiples of q from 0, not from the range's start
        return tune.choice(list(dim.values))
    if d.log:
        return tune.loguniform(d.low, d.high)
    return tune.uniform(d.low, d.high)


def check_settings(s: DictConfig, space: dict[str, Any], mutations: dict[str, Any]) -> None:
    """What one key's value cannot say (RayTuneConfig checks each), in one line naming the key."""
    if s.seeds > 1 and s.scheduler != "fifo":
        raise ConfigValueError("hydra.sweeper.seeds", s.seeds, f"1 with scheduler={s.scheduler}, which decides on "
                                                               "each validation of one run (seeds>1: scheduler=fifo)")
    for key, value in s.resources_per_trial.items():
        if value < 0:
            raise ConfigValueError(f"hydra.sweeper.resources_per_trial.{key}", value, "0 or more")
    if s.scheduler == "pbt":
        if not mutations:
            raise ConfigValueError("hydra.sweeper.pbt.hyperparam_mutations", {}, "at least one key PBT changes, "
                                   "e.g. {optimizer.lr: 'tag(log, interval(1e-4, 1e-1))'}")
        for key in mutations:
            if not key.startswith("optimizer.") or key.count(".") != 1:
                raise ConfigValueError(mutations[key].where, mutations[key].text,
                                       "a search over an optimizer key (optimizer.lr, optimizer.weight_decay, ...) "
                                       "with scheduler=pbt, which changes them in running trials and copies the "
                                       "rest of a trial's configuration with its weights")


# ------------------------------------------------------------------------------------------------- driver


@dataclass
class JobSpec:
    """What a trial needs to run its jobs as the sweep's (sent to the Ray workers with the trainable)."""

    hydra_state: Any  # Hydra's Singleton state, the HydraContext and the sweep config: as the joblib launcher ships
    hydra_context: Any
    sweep_config: Any
    task_function: Any
    sweep_dir: str
    cwd: str  # the driver's: relative paths in the config (data roots) resolve as they would there
    fixed: list[str]  # overrides every job gets
    dims: dict[str, Any]  # key -> Dimension (to write a value back as an override)
    mutations: list[str]  # PBT's keys
    metric: str
    mode: str
    monitor: str
    seeds: int
    base_seed: int
    stop_status: str  # what a job Tune stops ends as: pruned (ASHA) or interrupted (PBT's pause)


class RaySearch:
    """One search: compose-check the space, start or join Ray, run (or restore) Tune's experiment, log the best."""

    def __init__(self, settings: DictConfig, config: DictConfig, hydra_context: Any, task_function: Any):
        self.s, self.config, self.hydra_context, self.task_function = settings, config, hydra_context, task_function
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def run(self, arguments: list[str]) -> None:
        from lrtrain.sweep.search import SYNTAX, check_jobs_compose, parse_space

        s = self.s
        space, fixed = parse_space(dict(s.params), arguments)
        mutations = parse_space({k: v for k, v in s.pbt.hyperparam_mutations.items()}, [])[0]
        for dim in mutations.values():
            dim.where = f"hydra.sweeper.pbt.hyperparam_mutations.{dim.where.rsplit('.params.', 1)[-1]}"
        if s.scheduler == "pbt":  # a searched key is one PBT mutates: it copies a trial's config with its weights
            mutations, space = {**mutations, **space}, {}
        else:
            mutations = {}
        if not space and not mutations:
            raise ConfigValueError("hydra.sweeper.params", dict(s.params),
                                   f"a search space with at least one dimension: {SYNTAX}")
        check_settings(s, space, mutations)
        ray = import_ray()
        trainer = self.config.trainer
        metric = s.metric or trainer.monitor
        mode = s.mode or trainer.monitor_mode
        check_jobs_compose(self.config, self.hydra_context.config_loader, {**mutations, **space}, fixed)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)

        from hydra.core.singleton import Singleton

        spec = JobSpec(Singleton.get_state(), self.hydra_context, self.config, self.task_function,
                       str(self.sweep_dir.resolve()), os.getcwd(), list(fixed.values()), {**mutations, **space},
                       list(mutations), metric, mode, trainer.monitor, int(s.seeds), int(trainer.seed),
                       str(Status.INTERRUPTED if s.scheduler == "pbt" else Status.PRUNED))
        started = not ray.is_initialized()
        if started:
            self._init(ray)
        try:
            results = self._tune(spec, {k: tune_domain(d) for k, d in space.items()},
                                 {k: tune_domain(d) for k, d in mutations.items()})
        finally:
            if started:
                ray.shutdown()
        self._log_best(results, spec)

    def _init(self, ray: Any) -> None:
        s = self.s
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if s.address is None:
            kwargs["num_cpus"] = s.num_cpus
        elif s.num_cpus is not None:
            raise ConfigValueError("hydra.sweeper.num_cpus", s.num_cpus, "null with hydra.sweeper.address set "
                                                                         "(the cluster has its own)")
        try:
            ray.init(address=s.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise ConfigValueError("hydra.sweeper.address", s.address, f"a Ray cluster this process can join "
                                                                       f"({first.strip()})") from None
        where = "a local Ray" if s.address is None else f"the Ray cluster at {s.address}"
        log.info(f"Ray Tune on {where}: {ray.cluster_resources().get('CPU', 0):g} CPUs, "
                 f"{ray.cluster_resources().get('GPU', 0):g} GPUs")

    def _tune(self, spec: JobSpec, space: dict[str, Any], mutations: dict[str, Any]) -> Any:
        from ray import tune

        s = self.s
        trainable = tune.with_resources(trainable_class(tune.with_parameters(trial, spec=spec)),
                                        {"cpu": s.resources_per_trial.cpu, "gpu": s.resources_per_trial.gpu})
        experiment = self.sweep_dir.resolve() / EXPERIMENT
        (experiment / INTERRUPTED).unlink(missing_ok=True)
        # lrtrain's own SIGINT/SIGTERM handler stays (Tune's would replace it): the stopper (tune_hooks) reads it,
        # and the sweep ends with the signal's exit code
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        if tune.Tuner.can_restore(str(experiment)):
            log.info(f"Ray Tune: resuming the search in {experiment}")
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, param_space={**space, **mutations},
                               tune_config=self._tune_config(spec, mutations),
                               run_config=self._run_config(spec))
        return tuner.fit()

    def _tune_config(self, spec: JobSpec, mutations: dict[str, Any]) -> Any:
        from ray import tune

        s = self.s
        if s.search_alg == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=s.seed)
        else:
            from ray.tune.search import BasicVariantGenerator

            # its own limit: Tune ignores max_concurrent_trials for a search generator (it warns so)
            search_alg = BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent_trials or 0)
        if s.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=s.asha.max_t or self._validations(),
                                      grace_period=s.asha.grace_period, reduction_factor=s.asha.reduction_factor)
        elif s.scheduler == "pbt":
            from ray.tune.schedulers import PopulationBasedTraining

            p = s.pbt
            scheduler = PopulationBasedTraining(
                time_attr="training_iteration", perturbation_interval=p.perturbation_interval,
                hyperparam_mutations=mutations, quantile_fraction=p.quantile_fraction,
                resample_probability=p.resample_probability, perturbation_factors=tuple(p.perturbation_factors),
                synch=p.synch, log_config=False)
        else:
            from ray.tune.schedulers import FIFOScheduler

            scheduler = FIFOScheduler()
        return tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=s.num_samples, search_alg=search_alg,
                               scheduler=scheduler, reuse_actors=False,
                               max_concurrent_trials=s.max_concurrent_trials if s.search_alg == "optuna" else None)

    def _run_config(self, spec: JobSpec) -> Any:
        from ray import tune

        stopper, trial_log = tune_hooks(spec)
        return tune.RunConfig(
            name=EXPERIMENT, storage_path=str(self.sweep_dir.resolve()), verbose=0, stop=stopper,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
            failure_config=tune.FailureConfig(max_failures=0), callbacks=[trial_log])

    def _validations(self) -> int:
        """A run's validation points, for ASHA's max_t: from the composed config's timeline."""
        from lrtrain.durations import parse_duration

        t = self.config.trainer
        every = parse_duration(t.val_every)
        if t.max_steps is None and every.unit == "ep" and every.amount.is_integer():
            return max(1, math.ceil(t.max_epochs / every.amount))
        return 10**6  # steps-based: ASHA then stops only by rungs, the trial's own end ends it

    def _log_best(self, results: Any, spec: JobSpec) -> None:
        from lrtrain.writers import atomic_path

        rows = []
        for r in results:
            index = _trial_index(r.metrics.get("trial_id") or "")
            if spec.seeds > 1:  # the mean of the seeds' best values, as the trial reported it
                value = r.metrics.get(spec.metric) if r.metrics and not r.error else None
            else:  # the job's best monitored value, as the sweep report ranks it (Tune's is the last reported)
                summary = _read_json(Path(spec.sweep_dir) / str(index) / "summary.json")
                value = summary.get("best_value") if summary.get("status") in SUCCEEDED else None
            rows.append({"trial": index, "value": value, "error": str(r.error).splitlines()[0] if r.error else None,
                         "params": {k: r.config.get(k) for k in spec.dims} if r.config else {}})
        good = [r for r in rows if isinstance(r["value"], (int, float)) and math.isfinite(r["value"])
                and r["error"] is None]
        out: dict[str, Any] = {"name": "ray_tune", "metric": spec.metric, "mode": spec.mode,
                               "trials": len(rows), "errored": sum(r["error"] is not None for r in rows)}
        if good:
            best = (min if spec.mode == "min" else max)(good, key=lambda r: r["value"])
            overrides = [*spec.fixed, *(spec.dims[k].override(v) for k, v in best["params"].items())]
            command = " ".join(map(shlex.quote, ["lrtrain", *overrides, "hydra.mode=RUN"]))
            out.update(best_trial=best["trial"], best_value=best["value"], best_params=best["params"],
                       best_run_dir=str(Path(spec.sweep_dir) / str(best["trial"])), command=command)
            log.info(f"Best trial {best['trial']} of {len(rows)}: {spec.metric} {best['value']:.6g}")
            if spec.mutations:  # its values changed as it trained: summary.json's pbt, pbt_lr.png
                out.pop("command")
                log.info(f"Its values changed with its exploits: {out['best_run_dir']}/summary.json (pbt), "
                         "pbt_lr.png")
            else:
                log.info(f"Run it alone: {command}")
        else:
            log.warning("No trial of the search reported a value")
        with atomic_path(self.sweep_dir / "optimization_results.yaml") as tmp:
            OmegaConf.save(OmegaConf.create(out), tmp)


def _trial_index(trial_id: str) -> int:
    """Tune's trial ids are `<experiment>_<index>`: the index, in the order trials were made, names the job dir."""
    return int(trial_id.rsplit("_", 1)[-1])


def tune_hooks(spec: JobSpec) -> tuple[Any, Any]:
    """A Tune stopper that ends the search once lrtrain's own SIGINT/SIGTERM handler (lrtrain.signals) was
    called, and a callback logging each trial's end (classes made here: Ray is imported only when a search runs)."""
    from ray.tune import Callback, Stopper

    from lrtrain.signals import STOP

    class StopOnSignal(Stopper):
        """Tune's own interruption (its SIGUSR1 handler) saves the experiment with its trials resumable, where a
        stopper's `stop_all` would end them for good: on lrtrain's signal, mark the experiment, then raise it."""

        sent = False

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            if STOP and not self.sent:  # the mark tells the trials why Tune stops them: their jobs end `interrupted`
                (Path(spec.sweep_dir) / EXPERIMENT / INTERRUPTED).touch()
                os.kill(os.getpid(), signal.SIGUSR1)
                self.sent = True
            return False

    class TrialLog(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            value = (trial.last_result or {}).get(spec.metric)
            log.info(f"trial {_trial_index(trial.trial_id)} ended: last {spec.metric}={value}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log.info(f"trial {_trial_index(trial.trial_id)} failed: {trial.error_file}")

    return StopOnSignal(), TrialLog()


# ------------------------------------------------------------------------------------------------- trials


def trainable_class(function: Any) -> type:
    """Tune's function trainable over `trial`, whose stop waits for the job to write its outputs: Tune's own
    returns at once, and the worker process would end with the job's summary half written."""
    from ray.train._internal.session import get_session
    from ray.tune.trainable.function_trainable import wrap_function

    base = wrap_function(function)

    class LrtrainTrial(base):
        def cleanup(self) -> None:
            session = get_session()
            while session is not None and session.training_thread.is_alive():
                session.stop_event.set()
                session.continue_lock.release()  # a report waiting on it raises SystemExit: the job is told to stop
                session.training_thread.join(timeout=1)
            super().cleanup()

    LrtrainTrial.__name__ = "lrtrain"
    return LrtrainTrial


def trial(config: dict[str, Any], spec: JobSpec) -> None:
    """One trial: its job (or one per seed), run as jobs of the sweep; each validation reported to Tune."""
    from ray import tune

    index = _trial_index(tune.get_context().get_trial_id())
    values = {k: config[k] for k in spec.dims if k in config}
    job_dir = Path(spec.sweep_dir) / str(index)
    restore, exploit = None, None
    if spec.mutations:  # PBT: the job keeps the values it started with; Tune's config has the current ones
        started = _job_values(job_dir, spec)
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            source = json.loads((Path(checkpoint.path) / "lrtrain.json").read_text())
            if source["trial"] != index:
                restore = str(Path(checkpoint.path) / "last.pt")
                exploit = {"from_trial": source["trial"], "from_step": source["step"]}
        job_values = started or values
    else:
        job_values = values
    params = [spec.dims[k].override(v) for k, v in job_values.items()]
    if spec.seeds == 1:
        link = {"stop_status": spec.stop_status, "restore": restore, "exploit": exploit,
                "values": {k: values[k] for k in spec.mutations}}
        job = Job(spec, index, str(index), [*spec.fixed, *params], link)
        reported = job.run(report=True)
        summary = job.summary()
        if job.stopped:
            raise SystemExit(0)  # as Tune's own report raised it: the trial ends without a last report
        if summary.get("status") == Status.PRUNED:
            return
        _check(summary, job.dir, job.stderr)
        if not reported:  # a finished job of a search run again: its result, read back
            tune.report({spec.metric: summary.get("best_value"), "step": summary.get("steps")})
        return
    best = []
    for k in range(spec.seeds):
        seed = spec.base_seed + k
        job = Job(spec, index * spec.seeds + k, f"{index}/{k}", [*spec.fixed, *params, f"trainer.seed={seed}"], None)
        job.run(report=False)
        summary = job.summary()
        _check(summary, job.dir, job.stderr)
        best.append(summary["best_value"])
    tune.report({spec.metric: sum(best) / len(best), "seeds": len(best), "seed_values": best})


def _check(summary: dict, job_dir: Path, stderr: Any) -> None:
    """A job that did not succeed fails its trial (Tune records the error and goes on with the others)."""
    status = summary.get("status")
    if status not in SUCCEEDED or not isinstance(summary.get("best_value"), (int, float)):
        tail = "; ".join(line for line in stderr if line.strip())[-400:]
        raise RuntimeError(f"{job_dir}: {status or 'no summary.json'}: {summary.get('stop_reason') or tail}")


def _job_values(job_dir: Path, spec: JobSpec) -> Optional[dict[str, Any]]:
    """The searched values the trial's job started with, from its `.hydra/overrides.yaml` (Tune's config holds
    the ones PBT changed since)."""
    from lrtrain.sweep.report import parse_override

    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    found = {}
    for line in OmegaConf.load(path):
        key, value = parse_override(str(line))
        if key in spec.dims:
            found[key] = value
    return found if len(found) == len(spec.dims) else None


class Job:
    """One lrtrain job of the sweep in a process of its own, linked to this trial through two pipes."""

    def __init__(self, spec: JobSpec, num: int, subdir: str, overrides: list[str], link: Optional[dict]):
        self.spec, self.num, self.subdir, self.link = spec, num, subdir, link
        self.overrides = [*overrides, f"hydra.sweep.subdir={subdir}"]
        self.dir = Path(spec.sweep_dir) / subdir
        self.stopped = False  # Tune stopped the trial (ASHA, PBT's pause, the end of the search)
        self.interrupted = False  # ... because a signal ended the search
        self.stderr: deque[str] = deque(maxlen=20)

    def run(self, report: bool) -> int:
        """Run the job to its end; with `report`, report every validation to Tune. Returns the reports made."""
        import pickle

        from ray import cloudpickle

        env = dict(os.environ)
        fds: list[int] = []
        if report and self.link is not None:
            rows_r, rows_w = os.pipe()
            decisions_r, decisions_w = os.pipe()
            env[ENV] = json.dumps({**self.link, "rows": rows_w, "decisions": decisions_r})
            fds = [rows_w, decisions_r]
        payload = cloudpickle.dumps((self.spec.hydra_state, self.spec.hydra_context, self.spec.sweep_config,
                                     self.spec.task_function, self.overrides, self.num), protocol=pickle.HIGHEST_PROTOCOL)
        proc = subprocess.Popen([sys.executable, "-m", "lrtrain.sweep.ray_job"], cwd=self.spec.cwd, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                pass_fds=fds)
        for fd in fds:
            os.close(fd)
        drain = threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True)
        drain.start()
        reports = 0
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
            if fds:
                with os.fdopen(rows_r, "r") as rows, os.fdopen(decisions_w, "w") as decisions:
                    for line in rows:
                        decision = self._report(json.loads(line))
                        reports += 1
                        decisions.write(decision + "\n")
                        decisions.flush()
            proc.wait()
        except BaseException:
            proc.terminate()  # the trial is going away: the job stops as a signalled run does
            proc.wait()
            raise
        finally:
            drain.join(timeout=10)
        return reports

    def _report(self, message: dict) -> str:
        """Report one validation to Tune with the job's last.pt; `stop` when Tune stops the trial."""
        import shutil
        import tempfile

        from ray import tune

        if self.stopped:
            return "interrupt" if self.interrupted else "stop"
        staging = Path(tempfile.mkdtemp(prefix="lrtrain-ckpt-"))
        try:
            last = self.dir / "checkpoints" / "last.pt"
            try:
                os.link(last, staging / "last.pt")  # lrtrain replaces last.pt by a rename: this inode stays
            except OSError:
                shutil.copy2(last, staging / "last.pt")
            (staging / "lrtrain.json").write_text(json.dumps({"trial": _trial_index(tune.get_context().get_trial_id()),
                                                              "step": message["step"], "job_dir": str(self.dir)}))
            metrics = {self.spec.metric: message["row"].get(self.spec.metric), "step": message["step"],
                       "epoch": message["epoch"], **{k: v for k, v in message["row"].items()
                                                     if isinstance(v, (int, float))}}
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(staging)))
            except SystemExit:  # Tune's way of ending a function trainable it stops
                self.stopped = True
                self.interrupted = (Path(self.spec.sweep_dir) / EXPERIMENT / INTERRUPTED).exists()
                return "interrupt" if self.interrupted else "stop"
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return "continue"

    def _drain(self, stream: Any) -> None:
        for raw in stream:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    def summary(self) -> dict:
        try:
            return json.loads((self.dir / "summary.json").read_text())
        except (OSError, ValueError):
            return {}


# ---------------------------------------------------------------------------------------------- job side


class RayLink:
    """The job's side of its trial: `update` at every validation point (the loop's pruning hook) sends the row
    and waits for Tune's decision; `restore`, `values` and `exploit` tell a PBT trial what to continue from."""

    def __init__(self, data: dict[str, Any]):
        self.rows = os.fdopen(data["rows"], "w")
        self.decisions = os.fdopen(data["decisions"], "r")
        self.stop_status = Status(data["stop_status"])
        self.restore: Optional[str] = data.get("restore")
        self.exploit: Optional[dict] = data.get("exploit")
        self.values: dict[str, Any] = data.get("values") or {}
        self.validations: Optional[int] = None  # the run's validation points (set by lrtrain.build)

    @classmethod
    def from_environment(cls) -> Optional["RayLink"]:
        text = os.environ.pop(ENV, None)  # the job's own: a process it starts (a DataLoader worker) does not link
        return cls(json.loads(text)) if text else None

    def update(self, index: int, row: dict[str, Any]) -> Optional[str]:
        self.rows.write(json.dumps({"index": index, "step": row["step"], "epoch": row["epoch"],
                                    "row": {k: v for k, v in row.items() if isinstance(v, (int, float))}}) + "\n")
        self.rows.flush()
        decision = self.decisions.readline().strip()
        # Tune stops a trial at its last validation too (ASHA's max_t): the run is complete, not pruned
        if decision == "continue" or (self.validations is not None and index + 1 >= self.validations):
            return None
        if decision == "interrupt":  # a signal ended the search: the job is resumed when the search is run again
            self.stop_status = Status.INTERRUPTED
            return f"the search was interrupted; stopped after validation {index + 1}"
        if self.stop_status == Status.PRUNED:
            return f"stopped by Ray Tune's scheduler after validation {index + 1}"
        return f"paused by Ray Tune's PBT after validation {index + 1} (to continue from another trial)"


@dataclass
class PBTState:
    """A PBT trial's job: the optimizer values PBT set (each a factor on the configured value: the LR scales the
    base LR, which every schedule multiplies), and the exploits made so far (summary.json's `pbt`)."""

    factors: dict[str, float]  # optimizer key -> current / configured
    configured: list[dict[str, float]]  # each param group's configured values of those keys
    exploits: list[dict[str, Any]]
    values: dict[str, Any]
    rows: Optional[tuple[int, int]] = None  # (steps.csv, metrics.csv) rows of this job up to the donor's step

    def apply(self, optimizer: Any) -> list[float]:
        """After a restore (which loads the donor's optimizer values): set this trial's; the base LRs to train with."""
        for group, configured in zip(optimizer.param_groups, self.configured):
            for key, base in configured.items():
                if key != "lr":
                    group[key] = base * self.factors[key]
        return [c["lr"] * self.factors.get("lr", 1.0) for c in self.configured]

    def record(self) -> dict[str, Any]:
        return {"values": self.values, "exploits": self.exploits}


def pbt_state(link: RayLink, optimizer: Any, config: dict, out_dir: Path, donor_step: Optional[int]) -> PBTState:
    """The PBT state of a job linked to its trial: values against the config's, and the exploit being made."""
    factors, configured = {}, []
    for key, value in link.values.items():
        name = key.split(".", 1)[1]
        base = config["optimizer"].get(name)
        if not isinstance(base, (int, float)) or base == 0:
            raise ConfigValueError(key, base, "a non-zero number in the optimizer's config for PBT to change")
        factors[name] = float(value) / float(base)
    for group in optimizer.param_groups:
        configured.append({k: float(group[k]) for k in factors if k in group})
    previous = _read_json(out_dir / "summary.json").get("pbt") or {}
    exploits = list(previous.get("exploits") or [])
    state = PBTState(factors, configured, exploits, dict(link.values))
    if link.exploit is not None and donor_step is not None:
        exploits.append({**link.exploit, "at_step": donor_step, "old": previous.get("values") or {},
                         "new": dict(link.values)})
        # steps.csv's `step` counts the updates before the row's (the donor's next row is `donor_step`);
        # metrics.csv's the updates done at the validation (the donor's last is `donor_step`)
        state.rows = (_rows_before(out_dir / "steps.csv", donor_step),
                      _rows_before(out_dir / "metrics.csv", donor_step + 1))
    return state


def _rows_before(path: Path, step: int) -> int:
    """Data rows of a CSV whose `step` is below `step`: what the job keeps of its own history at an exploit (a
    trial ahead of its donor loses its rows from the donor's step on, which the donor's continuation rewrites)."""
    import csv

    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        return sum(1 for row in csv.DictReader(f) if row.get("step") and int(float(row["step"])) < step)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
