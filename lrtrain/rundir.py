"""A run dir belongs to one run.

Hydra creates the run dir and writes `.hydra/` and `lrtrain.log` into it before the task starts, so the dir is
claimed in a Hydra callback that runs first (`on_run_start`, configs/config.yaml):

- the default dir (`outputs/<date>/<time>`) is made with `mkdir`, which fails if it exists: two runs started in
  the same second get `<time>` and `<time>-1`;
- a dir given with `hydra.run.dir` that holds another run is refused, unless it is being resumed
  (`trainer.resume=<that dir>` or `auto`) or `trainer.overwrite=true` (its run is deleted first); an empty or
  new dir is claimed by making its `.hydra/` with `mkdir`, so of two runs given the same dir one is refused;
- a resume in place may still be refused (a bad value, a checkpoint of another model): what Hydra rewrote in
  the dir (`.hydra/`, `lrtrain.log`) is put back as it was (`Snapshot`), and no `summary.json` is written.

A refusal is raised as `RunDirRefused`, a BaseException: Hydra turns a callback's Exception into a warning.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback

# What a run writes; a dir holding any of them holds a run.
RUN_FILES = (".hydra", "summary.json", "steps.csv", "metrics.csv", "checkpoints")


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
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml") if hydra_subdir else ():
            path = run_dir / hydra_subdir / name
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


class RunDirClaim(Callback):
    """Hydra callback: claim the run dir before Hydra writes into it (single runs; a sweep's job dirs are numbered
    inside the sweep's own dir)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        claim(config)


def claim(config: Any) -> Path:
    """Claim `hydra.run.dir` for this run (changing it to a free name when it is the default); return it."""
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
    if _resumes_in_place(trainer.resume, target):
        resumed_in_place = Snapshot.take(target, hydra.output_subdir, f"{hydra.job.name}.log")
        return target
    explicit = any(o.lstrip("+~").split("=", 1)[0] == "hydra.run.dir" for o in hydra.overrides.hydra)
    if not explicit:
        target = _new_dir(target)
        with read_write(hydra), open_dict(hydra):
            hydra.run.dir = str(target)
        return target
    if holds_run(target):
        if not trainer.overwrite:
            raise RunDirRefused(
                f"hydra.run.dir={target}: holds another run ({describe_run(target)}); resume it with "
                f"trainer.resume={target}, replace it with trainer.overwrite=true, or choose another dir")
        shutil.rmtree(target)
    target.mkdir(parents=True, exist_ok=True)
    marker = target / (hydra.output_subdir or ".hydra")
    try:
        marker.mkdir()
    except FileExistsError:  # another run made it since holds_run looked
        raise RunDirRefused(f"hydra.run.dir={target}: another run claimed it at the same time; "
                            "choose another dir") from None
    return target


def launched_rank() -> Optional[int]:
    """This process's rank when a launcher (torchrun) started it, else None."""
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None and rank.isdigit() else None


def scratch_run_dir() -> str:
    """Hydra's run dir for ranks > 0: a private scratch dir, so that the one dated run dir is rank 0's."""
    return str(Path(tempfile.gettempdir()) / f"lrtrain-rank{launched_rank()}-{os.getpid()}")


def _resumes_in_place(resume: Optional[str], target: Path) -> bool:
    """`trainer.resume` continues the run in `target`: auto (when it exists), the dir itself or one of its .pt."""
    if not resume:
        return False
    if resume == "auto":
        return target.is_dir()
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
    raise RunDirRefused(f"hydra.run.dir={path}: 10,000 runs already started there in the same second")


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def describe_run(path: Path) -> str:
    """`status completed, 20 epochs` from its summary.json, or what it holds."""
    import json

    try:
        summary = json.loads((path / "summary.json").read_text())
        epochs = summary.get("epochs")
        return f"status {summary.get('status')}" + (f", {epochs} epoch{'s' * (epochs != 1)}" if epochs else "")
    except (OSError, ValueError):
        return "no summary.json: " + ", ".join(name for name in RUN_FILES if (path / name).exists())
