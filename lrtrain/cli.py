"""The `lrtrain` command: Hydra composes and validates the config, `build` makes the objects, `fit` trains."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lrtrain.config import register, validate
from lrtrain.paths import config_dir
from lrtrain.summary import Status, Summary

_SHOW_TRACEBACK = False  # set by main() from HYDRA_FULL_ERROR


def train(cfg: DictConfig) -> Optional[float]:
    """One run. Returns the best monitored value, for Hydra sweepers to optimise (None: the run failed)."""
    from lrtrain import rundir
    from lrtrain.errors import Interrupted
    from lrtrain.signals import PREEMPTION, STOP

    hydra_cfg = HydraConfig.get()
    single = hydra_cfg.mode.name == "RUN"
    out_dir = Path(hydra_cfg.runtime.output_dir)
    job = None if single else hydra_cfg.job.num
    if not single:
        state = rundir.claim_job(out_dir, cfg, hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log")
        if state == "reuse":
            return reused(out_dir, job)
        if state == "resume" and not cfg.trainer.resume:
            cfg.trainer.resume = "auto"  # the same job, killed or interrupted: continue it in place
    try:
        if STOP and not single:  # a sweep that was interrupted: the jobs after it are listed, not run (a single
            # run signalled as it starts goes on to where a stop is honoured, and ends `interrupted` there)
            Summary(status=Status.NOT_STARTED, stop_reason=f"the sweep was interrupted by {STOP.name} before this job",
                    run_dir=str(out_dir)).write(out_dir / "summary.json")
            return None
        PREEMPTION.install()
        try:
            summary = _train(cfg, out_dir)
        except Interrupted as e:  # before training: nothing to resume; a sweep goes on to list its other jobs
            print(f"lrtrain: {'' if job is None else f'job {job} '}interrupted by {e}", file=sys.stderr)
            if job is None:
                sys.exit(STOP.exit_code)
            return None
        except Exception as e:
            return failed(e, job)
        return outcome(summary, out_dir, job)
    finally:
        if not single:
            rundir.release(out_dir)


def reused(out_dir: Path, job: Optional[int]) -> Optional[float]:
    """A job whose dir holds a finished run of its configuration (the sweep run again): not trained again, its
    value is read back."""
    summary = Summary.read(out_dir / "summary.json")
    print(f"lrtrain: job {job}: already {summary.status} in {out_dir} (the same configuration); not trained again",
          file=sys.stderr)
    return summary.best_value if summary.succeeded else None


def failed(e: Exception, job: Optional[int]) -> None:
    """A run that raised: a single run exits with the error's message and code; a sweep's job returns None."""
    if _SHOW_TRACEBACK:
        raise e
    if job is None:
        _exit_with(e)
    # In a sweep the job's summary.json records the failure and the other jobs go on; the sweep report
    # (lrtrain.report.SweepReport) then makes the sweep exit non-zero.
    from lrtrain.errors import describe

    print(f"lrtrain: job {job} failed: {describe(e)[0]}", file=sys.stderr)
    return None


def outcome(summary: Summary, out_dir: Path, job: Optional[int]) -> Optional[float]:
    """What a run that ended returns (the best monitored value, None unless it succeeded); a single run that
    was interrupted or diverged exits with its code. `job`: the job's number in a sweep, None for a single run."""
    from lrtrain.errors import EXIT_DIVERGED
    from lrtrain.signals import PREEMPTION, STOP

    single = job is None
    if summary.status == Status.INTERRUPTED:
        where = f"at step {summary.steps}" + (f" of job {job}" if not single else "")
        if PREEMPTION.pending:
            print(f"lrtrain: pre-empted ({STOP.name}) {where}; submitit requeues the job, which resumes from "
                  f"{shlex.quote(str(out_dir / 'checkpoints' / 'last.pt'))}", file=sys.stderr)
            PREEMPTION.requeue()  # submitit's handler: it requeues the job and exits
        if not (out_dir / "checkpoints" / "last.pt").is_file():
            # stopped before its first checkpoint: nothing to resume; the dir holds no result, a re-run claims it
            how = f"run it again with: lrtrain <the same overrides> hydra.run.dir={shlex.quote(str(out_dir))}"
        else:
            how = f"resume with: {resume_command(out_dir)}"
        print(f"lrtrain: interrupted by {STOP.name} {where}; {how}", file=sys.stderr)
        if single:
            sys.exit(STOP.exit_code)
        return None
    if single and summary.status == Status.DIVERGED:
        print(f"lrtrain: diverged: {summary.stop_reason}; the last good state is in "
              f"{shlex.quote(str(out_dir / 'checkpoints' / 'last.pt'))}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    return summary.best_value if summary.succeeded else None


def resume_command(run_dir: Path) -> str:
    """`lrtrain trainer.resume=<run_dir>` as a line to paste into a shell: quoted for the shell, and for Hydra
    too where its grammar would split the path (a comma, a bracket, a quote)."""
    text = str(run_dir)
    if any(c in text for c in ",=[]{}()'\"") or text != text.strip():
        text = "'" + text.replace("'", "\\'") + "'"
    return f"lrtrain {shlex.quote(f'trainer.resume={text}')}"


def sweep_position() -> tuple[Optional[Path], Optional[int]]:
    """(the sweep's dir, this job's number) in a multirun; (None, None) for a single run."""
    hydra_cfg = HydraConfig.get()
    return (Path(hydra_cfg.sweep.dir), hydra_cfg.job.num) if hydra_cfg.mode.name == "MULTIRUN" else (None, None)


def _train(cfg: DictConfig, out_dir: Path) -> Summary:
    sweep = sweep_position()
    plots = "csv" in cfg.logger and cfg.logger.csv.plots
    from lrtrain.signals import PREEMPTION

    if PREEMPTION.signum is not None and not cfg.trainer.resume:
        cfg.trainer.resume = "auto"  # a requeued submitit job continues from its own last.pt
    try:
        _reset_threads()
        validate(cfg)
        lineage = None
        if cfg.fork["from"] is not None:
            from lrtrain.forks import fork_config

            cfg, lineage = fork_config(cfg, out_dir)
            validate(cfg)
        _threads_for_parallel_jobs(cfg)
        if cfg.mode == "coord_check":
            from lrtrain.build import build_coord_check

            build_coord_check(cfg, out_dir).run(plots=plots)
            summary = Summary(status=Status.COMPLETED, run_dir=str(out_dir))
            summary.write(out_dir / "summary.json")
            return summary
        from lrtrain.build import build

        run = build(cfg, out_dir, *sweep, fork=lineage)
        lr_search = None
        if cfg.mode == "lr_find" or cfg.optimizer.lr == "auto":
            from lrtrain.build import build_lr_finder

            lr_search = build_lr_finder(cfg).run(run, plots=plots)
    except BaseException as e:
        record_failure(out_dir, e)
        raise
    if cfg.mode == "lr_find":
        summary = Summary(status=Status.COMPLETED, run_dir=str(out_dir), lr_find=lr_search)
        summary.write(out_dir / "summary.json")
        return summary
    from lrtrain.loop import fit

    if lr_search is not None:
        from lrtrain.lr_find import use_lr

        use_lr(run, lr_search["suggested_lr"])
        run.lr_find = lr_search
    try:
        return fit(run)
    finally:
        if run.dist:
            run.dist.stop()
            from lrtrain.rundir import scratch_run_dir

            # This rank's own scratch Hydra dir, never a run dir given with hydra.run.dir (all ranks share it).
            if not run.dist.main and out_dir == Path(scratch_run_dir()):
                import shutil

                shutil.rmtree(out_dir, ignore_errors=True)


_default_threads: Optional[int] = None  # torch's thread count before the first job of this process changed it


def _reset_threads() -> None:
    """Each job of a sequential sweep starts from the process's own thread count: one job's
    trainer.num_threads must not carry over to the next."""
    global _default_threads
    import torch

    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    else:
        torch.set_num_threads(_default_threads)


def _threads_for_parallel_jobs(cfg: DictConfig) -> None:
    """Under a launcher that runs n_jobs at once on this machine (joblib), give each job cores // n_jobs
    torch threads, so that jobs x threads never exceeds the cores; trainer.num_threads, when set, wins."""
    if cfg.trainer.num_threads or HydraConfig.get().mode.name != "MULTIRUN":
        return
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or n_jobs == 1:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 = all cores, -2 = all but one
    torch.set_num_threads(max(1, cores // parallel))


def record_failure(out_dir: Path, e: BaseException) -> None:
    """A run that fails before training still leaves a summary.json saying why, in its own dir; a run dir that
    was to be resumed in place is left as it was (what Hydra rewrote in it is put back)."""
    from lrtrain import rundir
    from lrtrain.errors import describe

    snapshot = rundir.resumed_in_place
    if snapshot is not None and snapshot.log is not None and snapshot.log.parent.resolve() == out_dir.resolve():
        snapshot.restore()
        return
    if out_dir.is_dir():
        from lrtrain.errors import Interrupted
        from lrtrain.signals import STOP

        if isinstance(e, Interrupted):
            status, cause = Status.INTERRUPTED, str(e)
        elif isinstance(e, KeyboardInterrupt):  # a second signal, or SIGINT before lrtrain's handler took it
            status, cause = Status.INTERRUPTED, STOP.name or "SIGINT"
        else:
            status, cause = Status.FAILED, describe(e)[0]
        Summary(status=status, stop_reason=cause, run_dir=str(out_dir)).write(out_dir / "summary.json")


def main() -> None:
    """Console entry point: one-line errors and exit codes instead of tracebacks (HYDRA_FULL_ERROR=1 for them)."""
    try:
        _main()
    except SystemExit as e:
        _leave(e.code)
        raise
    _leave(0)


def _leave(code: object) -> None:
    """End the process now if nothing is left to finish, skipping the interpreter's teardown: freeing torch's
    objects one by one takes about 1 s of a 2-core CPU at every exit (docs/benchmarks.md, Sweeps). What an exit
    must still do is done first: the exit handlers (logging's flush, loggers' and multiprocessing's clean-up,
    weakref finalizers) and the standard streams' buffers. With another thread alive (a writer still draining)
    the normal exit runs, which waits for it."""
    import atexit
    import threading

    if threading.active_count() > 1 or not (code is None or isinstance(code, int)):
        return
    atexit._run_exitfuncs()  # what the interpreter's exit would run first (private, unchanged since Python 2)
    if threading.active_count() > 1:  # a handler started one: let the normal exit wait for it
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: nothing left to say
        pass
    os._exit(code or 0)


def _main() -> None:
    global _SHOW_TRACEBACK
    _SHOW_TRACEBACK = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra raise, so the error is reported here, once
    from lrtrain.rundir import RunDirRefused
    from lrtrain.signals import STOP

    STOP.install()
    register()
    from lrtrain.config import yaml_floats

    sys.argv[1:] = yaml_floats(sys.argv[1:])
    try:
        hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(train)()
    except RunDirRefused as e:
        from lrtrain import rundir
        from lrtrain.errors import EXIT_CONFIG

        if rundir.sweep_snapshot is not None:
            rundir.sweep_snapshot.restore()

        print(f"lrtrain: error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except KeyboardInterrupt:  # a second signal, or one before the loop could take it
        if _SHOW_TRACEBACK:
            raise
        print(f"lrtrain: interrupted by {STOP.name or 'SIGINT'}", file=sys.stderr)
        sys.exit(STOP.exit_code if STOP else 130)
    except Exception as e:
        if _SHOW_TRACEBACK:
            raise
        _exit_with(e)
    from lrtrain.report import SweepReport

    if STOP:  # a sweep that was interrupted: its report is written, the jobs it did not run are listed there
        where = f"; see {SweepReport.sweep_dir / 'sweep_summary.csv'}" if SweepReport.sweep_dir else ""
        print(f"lrtrain: sweep interrupted by {STOP.name}{where}", file=sys.stderr)
        sys.exit(STOP.exit_code)

    if SweepReport.failed:
        from lrtrain.errors import EXIT_FAILED

        n = len(SweepReport.failed)
        causes = "; ".join(f"job {r['job']} {r['status']}: {r['cause']}" for r in SweepReport.failed[:3])
        print(f"lrtrain: error: {n} job{'s' if n > 1 else ''} of the sweep did not complete ({causes}"
              f"{'; ...' if n > 3 else ''}); see {SweepReport.sweep_dir / 'sweep_summary.csv'}", file=sys.stderr)
        sys.exit(EXIT_FAILED)


def _exit_with(e: Exception) -> None:
    from lrtrain.errors import describe

    message, code = describe(e)
    print(f"lrtrain: error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
