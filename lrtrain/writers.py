"""File writing that never leaves a half-written file behind: append-only CSVs, atomic JSON."""

from __future__ import annotations

import csv
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextmanager
def atomic_path(path: Path, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends, removed when it
    raises. A rename within a folder is atomic: readers see the old file or the new one, never half of one.
    `fsync`: the data (and the rename) reach the disk before this returns, so a power cut keeps one of them."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if not tmp.is_dir():  # a folder in the way is not lrtrain's to remove
            tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

from lrtrain.errors import write_error


class CSVLog:
    """An append-only CSV with a fixed header; rows are flushed to disk at every `write`."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(columns)
            self._file.flush()

    def write(self, rows: Iterable[Iterable[Any]]) -> None:
        self._csv.writerows([[_fmt(v) for v in row] for row in rows])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def truncate_csv(path: Path, rows: int) -> None:
    """Keep the header and the first `rows` complete data rows (drops rows written after a checkpoint,
    and a last line cut short by a kill). Replaces the file atomically."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    keep = [line for line in lines[:rows + 1] if line.endswith("\n")]
    if keep == lines:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.writelines(keep)


def _fmt(value: Any) -> Any:
    # repr() of a float round-trips exactly, so values read back equal the ones used
    return repr(value) if isinstance(value, float) else value


def write_json_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write `path` whole or not at all: a failed write (a full disk) leaves the previous file and no temporary."""
    text = json.dumps(_jsonable(obj), indent=2) + "\n"
    try:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write(text)
    except OSError as e:
        raise write_error(path, e) from None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf
    return obj

