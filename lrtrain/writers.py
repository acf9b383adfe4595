"""What a run writes: steps.csv, metrics.csv, summary.json and TensorBoard events."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional


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
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def _fmt(value: Any) -> Any:
    # repr() of a float round-trips exactly, so values read back equal the ones used
    return repr(value) if isinstance(value, float) else value


def write_json_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf
    return obj


class TensorBoard:
    """Scalars in TensorBoard's event format; the writer (and its import) is created at the first write."""

    def __init__(self, log_dir: Optional[Path]):
        self.log_dir, self._writer = log_dir, None

    def scalars(self, tag_values: dict[str, float], step: int) -> None:
        if self.log_dir is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        for tag, value in tag_values.items():
            self._writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
