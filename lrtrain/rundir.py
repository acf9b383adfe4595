"""A run dir belongs to one run, and so does each job dir of a sweep.

Hydra creates the run dir and writes `.hydra/` and `lrtrain.log` into it before the task starts, so a single
run's dir is claimed in a Hydra callback that runs first (`on_run_start`, configs/config.yaml):

- the default dir (`outputs/<date>/<time>`) is made with `mkdir`, which fails if it exists: two runs started in
  the same second get `<time>` and `<time>-1`; the default sweep dir likewise (`on_multirun_start`);
- the run that claims a dir writes its record, `.lrtrain-run` (the names a run writes, its config, its pid),
  and holds an `fcntl` lock on it while it lives (the OS releases it when the process dies): a dir whose run
  still trains is refused to every other command, `resume` and `overwrite` included;
- a dir given with `hydra.run.dir` that holds another run is refused, unless it is being resumed
  (`trainer.resume=<that dir>` or `auto`), or `trainer.overwrite=true` (its run's files are deleted first: only
  names in its record that lrtrain writes; a dir holding anything else is refused), or its run never took a
  step (no checkpoint, not completed: a run that failed at its config is no result to keep);
- a resume in place may still be refused (a bad value, a checkpoint of another model): what Hydra rewrote in
  the dir (`.hydra/`, `lrtrain.log`) is put back as it was (`Snapshot`), and no `summary.json` is written;
- a sweep's job dir follows one rule under every launcher and sweeper (`job_state`): the same configuration
  finished is reused, unfinished is resumed, another configuration is refused; lrtrain's launchers apply it to
  a whole batch before any job trains, and each job applies it again when it starts (`claim_job`).

A refusal is raised as `RunDirRefused`, a BaseException: Hydra turns a callback's Exception into a warning, and
every failure of a claim (an OSError too) must stop the run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from hydra.experimental.callback import Callback

from lrtrain.summary import FINISHED

RECORD = ".lrtrain-run"  # a run's record of itself, and the file its lock is on
SWEEP_RECORD = ".lrtrain-sweep"
# What a run writes into its dir (besides Hydra's `.hydra/` and `<job name>.log`, named by the config).
RUN_NAMES = (RECORD, "summary.json", "steps.csv", "metrics.csv", "checkpoints", "tensorboard", "curves.png",
             "lr_find.csv", "lr_find.png", "lr_find.json", ".mlflow_run_id", ".wandb_run_id", "wandb",
             "coord_check.csv", "coord_check.png")
# What a sweep writes into its own dir besides the job dirs (lrtrain.sweep.report, Hydra, lrtrain.sweep.search, submitit).
SWEEP_NAMES = (SWEEP_RECORD, "multirun.yaml", "sweep_summary.csv", "study_summary.csv", "sweep.png",
               "lr_sensitivity.png", "optuna.db", "optimization_results.yaml", "search.png", ".submitit",
               "cooldown.png", "lr_transfer.png", "transfer.csv", "ray_tune", "pbt_lr.png")
# Statuses of a run that is a result: never replaced without trainer.overwrite=true.
RESULTS = FINISHED
# Keys that do not change a job's result: a sweep run again with other values of them is the same sweep.
IGNORED_KEYS = ("trainer.progress", "trainer.resume", "trainer.overwrite", "report")


class RunDirRefused(BaseException):
    """A run dir that holds another run; the message names it and the ways on."""


@dataclass
class Snapshot:
    """What Hydra rewrites in a run dir that is resumed in place, as it was before: restored on a refusal."""

    files: dict[Path, Optional[bytes]] = field(default_factory=dict)  # None: the file did not exist
    log: Optional[Path] = None
    log_size: Optional[int] = None  # None: there was no log

    @staticmethod
    def take(run_dir: Path, hydra_subdir: Optional[str], log_name: str) -> "Snapshot":
        snap = Snapshot(log=run_dir / log_name)
        paths = [run_dir / hydra_subdir / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")
                 if hydra_subdir]
        for path in [*paths, run_dir / RECORD]:  # the record: rewritten in place, its lock stays on it
            snap.files[path] = path.read_bytes() if path.is_file() else None
        snap.log_size = snap.log.stat().st_size if snap.log.is_file() else None
        return snap

    def restore(self) -> None:
        for path, content in self.files.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        if self.log is not None and self.log.is_file():
            if self.log_size is None:
                self.log.unlink()
            else:
                os.truncate(self.log, self.log_size)


# The in-place resume of this process, if any: lrtrain.cli restores it when the run is refused before training.
resumed_in_place: Optional[Snapshot] = None
# A sweep's own files as they were before this sweep: lrtrain.cli restores them when the sweep is refused.
sweep_snapshot: Optional[Snapshot] = None
# The records this process holds locked, by run dir: a single run's for the process's life, a job's until it ends.
_held: dict[Path, int] = {}
_job_states: dict[Path, str] = {}  # what claim_job found in each job dir this process holds


class RunDirClaim(Callback):
    """Hydra callback: claim the run dir before Hydra writes into it, and a sweep's dir before its jobs start
    (each job dir is claimed by its job, `claim_job`)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _stopping(claim, config, "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _stopping(claim_sweep, config, "hydra.sweep.dir")


def _stopping(claim_fn: Any, config: Any, key: str) -> Path:
    """Run a claim so that any failure of it stops the run in one line (Hydra would warn about an Exception
    raised in a callback and go on)."""
    from omegaconf import OmegaConf

    try:
        return claim_fn(config)
    except RunDirRefused:
        raise
    except OSError as e:
        where = e.filename or OmegaConf.select(config, key)
        raise RunDirRefused(f"{key}={_q(where)}: cannot be claimed: {e.strerror or e}") from None
    except Exception as e:
        raise RunDirRefused(f"{key}: cannot be claimed: {type(e).__name__}: {e}") from None


def _q(path: Any) -> str:
    """A path as a shell word, so that advice can be pasted."""
    return shlex.quote(str(path))


def claim(config: Any) -> Path:
    """Claim `hydra.run.dir` for this run (changing it to a free name when it is the default, or to the dir a
    symlink names); return it."""
    global resumed_in_place
    from omegaconf import open_dict, read_write

    hydra = config.hydra
    target = Path(hydra.run.dir)
    trainer = config.trainer
    rank = launched_rank()
    if trainer.strategy == "ddp" and rank:  # a scratch dir (config.run_dir_for): rank 0 writes the run
        return target
    if trainer.strategy != "ddp" and rank is not None:
        print(f"lrtrain: warning: started by torchrun (RANK={rank}) without trainer.strategy=ddp: this "
              "process trains a run of its own, in a dir of its own", file=sys.stderr)
    explicit = any(o.lstrip("+~").split("=", 1)[0] == "hydra.run.dir" for o in hydra.overrides.hydra)
    if (explicit or trainer.resume) and target.exists() and target.resolve() != target.absolute():
        # Written through a symlink, the run would land in the linked run's files: claim the dir itself.
        target = target.resolve()
        with read_write(hydra), open_dict(hydra):
            hydra.run.dir = str(target)
    log_name = f"{hydra.job.name}.log"
    names = _run_names(hydra.output_subdir, log_name)
    if _resumes_in_place(trainer.resume, target):
        snapshot = Snapshot.take(target, hydra.output_subdir, log_name)  # the record too, before the lock makes one
        created = _lock(target, names, None, key="trainer.resume")
        try:
            _check_resumable(target, trainer.resume)
            record = _record(target, hydra.output_subdir) or {}
        except BaseException:
            _unclaim(target, created, False)
            raise
        resumed_in_place = snapshot
        _write_record(target, names, record.get("config") or _job_config(config))
        return target
    if not explicit:
        target = _new_dir(target)
        with read_write(hydra), open_dict(hydra):
            hydra.run.dir = str(target)
        _lock(target, names, _job_config(config))
        return target
    if trainer.overwrite:  # before anything is made or looked at: these dirs are never a run's to replace
        _refuse_special(target, "trainer.overwrite=true")
    created_dir = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    created = _lock(target, names, None)
    try:
        record = _record(target, hydra.output_subdir)
        if record is not None:
            _replace(target, record, names, bool(trainer.overwrite))
        else:
            users = sorted(p.name for p in target.iterdir() if p.name in names and p.name != RECORD)
            if users:  # a user's own file by a name lrtrain writes: it would be appended to or replaced
                raise RunDirRefused(f"hydra.run.dir={_q(target)}: holds {', '.join(users)} but no lrtrain run "
                                    f"(no {RECORD} or .hydra/config.yaml): choose another dir")
    except BaseException:
        _unclaim(target, created, created_dir)
        raise
    _write_record(target, names, _job_config(config))
    return target


def _unclaim(target: Path, created: bool, created_dir: bool) -> None:
    """A claim refused: leave the dir as it was found."""
    release(target)
    if created:
        (target / RECORD).unlink(missing_ok=True)
    if created_dir and not any(target.iterdir()):
        target.rmdir()


def _replace(target: Path, record: dict, names: tuple[str, ...], overwrite: bool) -> None:
    """The dir holds another run (not live: its lock is ours): delete its files when it may be replaced, or
    refuse in one line with advice that works."""
    state = describe_run(target)
    if not overwrite and has_result(target):
        ways = [f"resume it with trainer.resume={_q(target)}"] if _checkpoint(target) else []
        ways += ["replace it with trainer.overwrite=true", "or choose another dir"]
        raise RunDirRefused(f"hydra.run.dir={_q(target)}: holds another run ({state}); {', '.join(ways)}")
    _delete_run(target, record, names, strict=overwrite)


def _refuse_special(target: Path, how: str) -> None:
    """The dirs whose run files overwrite never deletes, whatever they hold."""
    real = target.resolve()
    special = {Path.cwd().resolve(): "the current directory", Path.home().resolve(): "the home directory",
               Path("/"): "the root directory"}
    if real in special:
        raise RunDirRefused(f"hydra.run.dir={_q(target)}: is {special[real]}; {how} deletes run dirs only: "
                            "choose a dir of its own")
    outputs = (Path.cwd() / "outputs").resolve()
    if outputs == real or real in outputs.parents:
        what = "is" if outputs == real else "holds"
        raise RunDirRefused(f"hydra.run.dir={_q(target)}: {what} the outputs dir {outputs}; {how} deletes run "
                            "dirs only: choose a dir of its own")


def _delete_run(target: Path, record: dict, names: tuple[str, ...], strict: bool) -> None:
    """Delete a run's files: the names both its record lists and lrtrain writes. `strict` (overwrite): anything
    else in the dir is not the run's, and the dir is refused before anything is deleted."""
    own = set(record.get("names", names)) & set(names)
    others = sorted(p.name for p in target.iterdir() if p.name not in own)
    if others and strict:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise RunDirRefused(f"hydra.run.dir={_q(target)}: holds {shown}, which lrtrain did not write; nothing "
                            "was deleted: move them out, or choose another dir")
    for entry in target.iterdir():
        if entry.name == RECORD or entry.name not in own:
            continue  # the file this process holds locked; rewritten by the claim
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_resumable(target: Path, resume: str) -> None:
    """A resume in place needs a checkpoint; say what works instead (`auto` without one starts afresh)."""
    if _checkpoint(target):
        return
    where = f"trainer.resume={_q(resume)}: no checkpoint in {_q(target / 'checkpoints')}"
    record = _record(target)
    if not (target / "summary.json").is_file() and record is None:
        raise RunDirRefused(f"{where}: give a run dir that has one, a .pt file, or auto")
    again = f"hydra.run.dir={_q(target)}" + (" trainer.overwrite=true" if has_result(target) else "")
    config = (record or {}).get("config")
    if isinstance(config, dict) and config.get("mode") == "lr_find" or (target / "lr_find.csv").exists():
        how = f"an LR range test is not resumed: run it again with {again}"
    else:
        how = f"it never took a step: run the command again with {again}"
    raise RunDirRefused(f"{where} ({describe_run(target)}); {how}")


def _resumes_in_place(resume: Optional[str], target: Path) -> bool:
    """`trainer.resume` continues the run in `target`: auto (when it has a checkpoint), the dir itself or one of
    its .pt files."""
    if not resume:
        return False
    if resume == "auto":
        return _checkpoint(target)
    path = Path(resume).expanduser()
    run_dir = path if path.is_dir() else path.parent.parent
    return target.exists() and run_dir.resolve() == target.resolve()


def _new_dir(path: Path) -> Path:
    """`path`, or `path-1`, `path-2`, ... : the first one this process creates (mkdir is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        candidate = path if n == 0 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunDirRefused(f"{path}: 10,000 runs already started there in the same second")


# ----------------------------------------------------------------------------------------- records and locks


def _run_names(hydra_subdir: Optional[str], log_name: str) -> tuple[str, ...]:
    return (*RUN_NAMES, *([hydra_subdir] if hydra_subdir else []), log_name)


def _job_config(config: Any) -> dict:
    """A job's config as plain data, without Hydra's node and the keys that do not change its result: what two
    runs of one configuration have in common."""
    from omegaconf import DictConfig, OmegaConf

    data = (OmegaConf.to_container(config, resolve=False, enum_to_str=True)
            if isinstance(config, DictConfig) else dict(config))
    data.pop("hydra", None)
    for key in IGNORED_KEYS:
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return json.loads(json.dumps(data, default=str))  # tuples as lists, as a record read back has them


def _lock(target: Path, names: tuple[str, ...], config: Optional[dict], key: str = "hydra.run.dir") -> bool:
    """Take the lock on `target`'s record (creating it), held until `release` or the process ends; refuse a dir
    whose run still lives. With `config`, write the record now. True when this call created the record."""
    import fcntl

    path = target / RECORD
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = _read_json(path).get("pid")
        raise RunDirRefused(f"{key}={_q(target)}: " + (
            f"is still running (pid {pid}): wait for it to end, or stop it first" if pid else
            "another run claimed it at the same time: choose another dir")) from None
    except BaseException:
        os.close(fd)
        raise
    _held[target.resolve()] = fd
    if config is not None:
        _write_record(target, names, config)
    return created


def _write_record(target: Path, names: tuple[str, ...], config: dict, **extra: Any) -> None:
    """Rewrite the record in place (a rename would move it off the inode the lock is on)."""
    fd = _held[target.resolve()]
    data = json.dumps({"pid": os.getpid(), "names": sorted(names), "config": config, **extra}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def release(target: Path) -> None:
    """Let go of `target`'s lock (a job that ended); the record stays."""
    _job_states.pop(Path(target).resolve(), None)
    fd = _held.pop(Path(target).resolve(), None)
    if fd is not None:
        os.close(fd)


def release_all() -> None:
    for target in list(_held):
        release(target)


def live(target: Path) -> Optional[int]:
    """The pid of the run that holds `target`'s lock now (another process), else None."""
    import fcntl

    path = target / RECORD
    if target.resolve() in _held or not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read_json(path).get("pid") or -1
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(target: Path, hydra_subdir: Optional[str] = ".hydra") -> Optional[dict]:
    """A run's record of itself: `.lrtrain-run`; for a run made before lrtrain wrote one, Hydra's
    `.hydra/config.yaml` (its names are then the ones lrtrain writes). None: no run here."""
    record = _read_json(target / RECORD)
    if record.get("names"):
        return record
    hydra_config = target / (hydra_subdir or ".hydra") / "config.yaml"
    if hydra_config.is_file():
        from omegaconf import OmegaConf

        try:
            return {"config": _job_config(OmegaConf.load(hydra_config))}
        except Exception:  # unreadable: still a run's dir, but of a configuration no job can match
            return {"config": None}
    return None


def _checkpoint(path: Path) -> bool:
    return (path / "checkpoints" / "last.pt").is_file()


def _status(path: Path) -> Optional[str]:
    return _read_json(path / "summary.json").get("status")


def has_result(path: Path) -> bool:
    """Whether the run in `path` is worth keeping: it took a step (it has a checkpoint) or finished (an LR
    range test has no checkpoint). A run that failed or was stopped before its first step is not."""
    return _checkpoint(path) or _status(path) in RESULTS


def describe_run(path: Path) -> str:
    """`status completed, 20 epochs` from its summary.json, or what it holds."""
    summary = _read_json(path / "summary.json")
    if summary:
        epochs = summary.get("epochs")
        return f"status {summary.get('status')}" + (f", {epochs} epoch{'s' * (epochs != 1)}" if epochs else "")
    held = [p.name for p in sorted(path.iterdir()) if p.name in RUN_NAMES and p.name != RECORD]
    return "no summary.json: " + (", ".join(held) or "nothing yet")


# ---------------------------------------------------------------------------------------------- sweeps


def claim_sweep(config: Any) -> Path:
    """Claim `hydra.sweep.dir`: the default one gets a name of its own (as a run dir does); one given that holds
    anything but a sweep's files is refused. Its job dirs are claimed by their jobs (`claim_job`)."""
    from omegaconf import open_dict, read_write

    hydra = config.hydra
    target = Path(hydra.sweep.dir)
    explicit = any(o.lstrip("+~").split("=", 1)[0] == "hydra.sweep.dir" for o in hydra.overrides.hydra)
    if not explicit:
        target = _new_dir(target)
        with read_write(hydra), open_dict(hydra):
            hydra.sweep.dir = str(target)
            # each job is composed again from these overrides: it must land in this dir too
            quoted = str(target).replace("\\", "\\\\").replace("'", "\\'")
            hydra.overrides.hydra.append(f"hydra.sweep.dir='{quoted}'")
    elif target.is_dir() and not (target / SWEEP_RECORD).exists():
        entries = sorted(p.name for p in target.iterdir())
        sweep = any(n in SWEEP_NAMES for n in entries) or any(_record(p) for p in target.iterdir() if p.is_dir())
        if entries and not sweep:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise RunDirRefused(f"hydra.sweep.dir={_q(target)}: holds {shown}, not a sweep's: choose another dir")
    target.mkdir(parents=True, exist_ok=True)
    (target / SWEEP_RECORD).touch()
    global sweep_snapshot
    sweep_snapshot = Snapshot()
    for name in ("multirun.yaml",):  # Hydra's sweeper rewrites it before the jobs are checked
        path = target / name
        sweep_snapshot.files[path] = path.read_bytes() if path.is_file() else None
    return target


def job_state(job_dir: Path, config: Any, overwrite: bool = False, where: str = "") -> str:
    """The one rule for a job dir of a sweep, under every launcher and sweeper: `new` (empty, or a run of no
    result), `reuse` (a finished run of the same configuration), `resume` (the same configuration,
    unfinished, with a checkpoint), `replace` (trainer.overwrite=true); a dir whose run lives or that holds
    another configuration's result is refused (RunDirRefused), naming the first key that differs."""
    if not job_dir.is_dir() or not any(job_dir.iterdir()):
        return "new"
    where = where or f"{_q(job_dir)}:"
    pid = live(job_dir)
    if pid:
        raise RunDirRefused(f"{where} is still running (pid {pid}): wait for it to end, or stop it first")
    record = _record(job_dir)
    if record is None:
        names = sorted(p.name for p in job_dir.iterdir())
        raise RunDirRefused(f"{where} holds {', '.join(names[:3])}, not an lrtrain run's: move them out, "
                            "or choose another hydra.sweep.dir")
    if overwrite:
        return "replace"
    if not has_result(job_dir):
        return "new"
    theirs, ours = record.get("config"), _job_config(config)
    if theirs != ours:
        raise RunDirRefused(f"{where} holds a run of another configuration ({_difference(theirs, ours)}); "
                            "choose another hydra.sweep.dir, or replace its runs with trainer.overwrite=true")
    return "reuse" if _status(job_dir) in RESULTS else "resume"


def _difference(theirs: Any, ours: dict) -> str:
    if not isinstance(theirs, dict):
        return "its config is unreadable"
    a, b = dict(_flat(theirs)), dict(_flat(ours))
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            return f"{key}={a.get(key, '<absent>')} there, {b.get(key, '<absent>')} in this job"
    return "its config differs"


def _flat(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _flat(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], json.dumps(node)


def claim_job(job_dir: Path, config: Any, hydra_subdir: Optional[str], log_name: str) -> str:
    """Claim a job's dir as its job starts (Hydra has written `.hydra/` and opened the log): `job_state`, then
    the lock and the record; the files of a run it replaces are deleted, Hydra's own for this job kept."""
    if job_dir.resolve() in _held:  # claimed already in this process (a fused launcher's solo job)
        return _job_states[job_dir.resolve()]
    names = _run_names(hydra_subdir, log_name)
    overwrite = bool(config.trainer.get("overwrite"))
    # The record, not Hydra's .hydra/ (already rewritten for this job), says what ran here before.
    before = _read_json(job_dir / RECORD)
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    where = f"hydra.sweep.dir={_q(hydra.sweep.dir)}: job {hydra.job.num} ({_q(job_dir)})"
    try:
        if before.get("names"):
            state = job_state(job_dir, config, overwrite, where)
        elif has_result(job_dir) and not overwrite:
            raise RunDirRefused(f"{where} holds a run lrtrain kept no {RECORD} of (an older lrtrain's): "
                                "run this sweep with the default launcher once (it checks such runs by their "
                                "config), or choose another hydra.sweep.dir")
        elif users := sorted(p.name for p in job_dir.iterdir() if p.name in names and p.name not in
                             (RECORD, hydra_subdir, log_name)):
            raise RunDirRefused(f"{where} holds {', '.join(users)}, not an lrtrain run's: move them out, or choose "
                                "another hydra.sweep.dir")
        else:
            state = "replace" if overwrite else "new"
    except RunDirRefused:
        _put_back(job_dir, hydra_subdir, before.get("hydra") or {})
        raise
    fresh = _lock(job_dir, names, None)
    try:
        if state in ("new", "replace") and not fresh:
            keep = {RECORD, *(n for n in (hydra_subdir, log_name) if n)}
            for entry in job_dir.iterdir():
                if entry.name in names and entry.name not in keep:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        _write_record(job_dir, names, _job_config(config), hydra=_hydra_files(job_dir, hydra_subdir))
    except BaseException:
        release(job_dir)
        raise
    _job_states[job_dir.resolve()] = state
    return state


def _hydra_files(job_dir: Path, hydra_subdir: Optional[str]) -> dict[str, str]:
    """What Hydra wrote into the job's `.hydra/`: kept in the record, so that a later sweep refused in its job
    (after Hydra rewrote them, under launchers that do not check a batch first) can put them back."""
    folder = job_dir / (hydra_subdir or "")
    if not hydra_subdir or not folder.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(folder.glob("*.yaml"))}


def _put_back(job_dir: Path, hydra_subdir: Optional[str], files: dict[str, str]) -> None:
    for name, text in files.items():
        if hydra_subdir and "/" not in name:
            (job_dir / hydra_subdir / name).write_text(text)


def check_jobs(jobs: Iterable[tuple[Path, Any]]) -> None:
    """Apply `job_state` to every job of a batch before any trains: a refusal stops the sweep first."""
    for job_dir, config in jobs:
        if not job_dir.is_dir():
            continue
        where = f"hydra.sweep.dir={_q(config.hydra.sweep.dir)}: job {config.hydra.job.num} ({_q(job_dir)})"
        overwrite = bool(config.trainer.get("overwrite"))
        if job_state(job_dir, config, overwrite, where) != "new" and not overwrite:
            _adopt(job_dir, config)


def _adopt(job_dir: Path, config: Any) -> None:
    """A run of this job's configuration that an older lrtrain made, without a record: write one (from its own
    `.hydra/config.yaml`, which Hydra is about to rewrite), so that its job can tell it is the same."""
    path = job_dir / RECORD
    if _read_json(path).get("names"):
        return
    hydra = config.hydra
    names = _run_names(hydra.output_subdir, f"{hydra.job.name}.log")
    record = _record(job_dir, hydra.output_subdir) or {}
    path.write_text(json.dumps({"names": sorted(names), "config": record.get("config"),
                                "hydra": _hydra_files(job_dir, hydra.output_subdir)}))


def launched_rank() -> Optional[int]:
    """This process's rank when a launcher (torchrun) started it, else None."""
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None and rank.isdigit() else None


def scratch_run_dir() -> str:
    """Hydra's run dir for ranks > 0: a private scratch dir, so that the one dated run dir is rank 0's."""
    return str(Path(tempfile.gettempdir()) / f"lrtrain-rank{launched_rank()}-{os.getpid()}")
