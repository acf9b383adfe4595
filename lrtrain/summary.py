"""`Summary`: what a run ended as. The loop fills it, `summary.json` holds it, the CLI, the progress table and
the sweep report read it back."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Optional


class Status(StrEnum):
    """What a run is or ended as; the value is what summary.json holds (a StrEnum: equal to that string)."""

    RUNNING = "running"
    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    PRUNED = "pruned"  # stopped by an Optuna pruner (lrtrain/sweep/pruning.py) or Ray Tune's ASHA: a result, not a failure
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # a signal stopped it; a resume continues it
    NOT_STARTED = "not_started"  # a sweep was interrupted before this job


# Count as a result for sweepers and reports.
SUCCEEDED = frozenset({Status.COMPLETED, Status.EARLY_STOPPED})
# Ended for good: a re-run of a sweep does not train them again.
FINISHED = SUCCEEDED | {Status.DIVERGED, Status.PRUNED}
# Ended by an error or a signal: the run's own outputs may be incomplete.
BROKEN = frozenset({Status.FAILED, Status.INTERRUPTED})


@dataclass
class Summary:
    status: Status = Status.RUNNING
    stop_reason: Optional[str] = None
    run_dir: str = ""
    best_value: Optional[float] = None  # of monitor
    best_epoch: Optional[int] = None
    monitor: Optional[str] = None
    mode: Optional[str] = None  # min | max: the direction of monitor
    final: Optional[dict[str, Any]] = None  # the last epoch's metrics row
    test: Optional[dict[str, float]] = None
    epochs: Optional[int] = None
    steps: Optional[int] = None
    train_seconds: Optional[float] = None
    samples_per_second: Optional[float] = None
    device: Optional[str] = None
    threads: Optional[int] = None
    seed: Optional[int] = None
    resumed_from_step: Optional[int] = None
    rollbacks: Optional[list[dict[str, Any]]] = None
    restored_best_weights_from_epoch: Optional[int] = None
    world_size: Optional[int] = None  # ddp
    global_batch_size: Optional[int] = None
    rank_weight_hashes: Optional[list[str]] = None
    ranks_in_sync: Optional[bool] = None
    lr_find: Optional[dict[str, Any]] = None  # the LR range test's result, when one ran
    effective_lr: Optional[float] = None  # the last step size Prodigy or D-Adaptation learned
    fused: Optional[dict[str, Any]] = None  # hydra/launcher=fused: the replicas trained together with this job
    fork: Optional[dict[str, Any]] = None  # a cooldown fork: its parent's dir, the step it forked at, its cooldown
    pbt: Optional[dict[str, Any]] = None  # a Ray Tune PBT trial's job: its current values and every exploit made
    versions: Optional[dict[str, str]] = None

    # Written even when empty: a reader can always look these up (all but the extras, once training started).
    _ALWAYS = ("status", "stop_reason", "run_dir", "best_value")
    _EXTRAS = ("restored_best_weights_from_epoch", "world_size", "global_batch_size", "rank_weight_hashes",
               "ranks_in_sync", "lr_find", "effective_lr", "fused", "fork", "pbt")

    def __post_init__(self) -> None:
        if self.status in {s.value for s in Status}:  # read back from a file: the enum member
            self.status = Status(self.status)

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        trained = self.epochs is not None
        return {k: v for k, v in asdict(self).items()
                if v is not None or k in self._ALWAYS or (trained and k not in self._EXTRAS)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Summary":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, path: Path) -> "Summary":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def write(self, path: Path) -> None:
        from lrtrain.writers import write_json_atomic

        write_json_atomic(self.to_dict(), path)


def read_checked(path: Path) -> dict[str, Any]:
    """A summary.json as a dict whose known keys have the types `Summary` gives them; InputFileError naming the
    file and the first key that is wrong otherwise (the report would fail deep inside on it)."""
    import typing

    from lrtrain.errors import InputFileError

    try:
        # NaN and Infinity are not JSON, and lrtrain writes null for them: a NaN here is read as missing, as a
        # number it would break every ordering and count it joined
        data = json.loads(Path(path).read_text(), parse_constant=lambda name: None)
    except ValueError as e:
        raise InputFileError(f"{path}: not JSON ({e})") from None
    except RecursionError:  # Python's JSON parser recurses once per level
        raise InputFileError(f"{path}: not an lrtrain summary (JSON nested too deeply to read)") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected a JSON object (an lrtrain summary), found {type(data).__name__}")
    hints = typing.get_type_hints(Summary)
    for name, hint in hints.items():
        value = data.get(name)
        if value is None or name.startswith("_"):
            continue
        kind = next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))
        kind = typing.get_origin(kind) or kind
        kind = str if kind is Status else kind  # any string: statuses of other versions are reported as they are
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, kind))
        if not ok:
            expected = {float: "a number", int: "an integer", str: "a string", dict: "an object",
                        list: "a list", bool: "true or false"}.get(kind, kind.__name__)
            raise InputFileError(f"{path}: {name} is {value!r}, expected {expected} (not an lrtrain summary?)")
    return data
