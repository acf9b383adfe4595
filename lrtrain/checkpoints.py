"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from lrtrain.errors import CheckpointError
from lrtrain.signals import STOP


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A rename within one file system is atomic, so a kill at any instant leaves the old file or the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with STOP.shielded(), os.fdopen(fd, "wb") as f:  # a second Ctrl-C stops right after the write
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_copies(obj: dict[str, Any], paths: list[Path]) -> None:
    """Save once to `paths[0]`, then give the other paths the same content, each replaced atomically."""
    save_atomic(obj, paths[0])
    for path in paths[1:]:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(paths[0], tmp)  # a hard link: no second write; a later replace of one leaves the other
        except OSError:
            save_atomic(obj, path)
            continue
        os.replace(tmp, path)


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files of writes that were killed before their rename (`.<name>.*.tmp`)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint as data only: a pickle that carries code is refused, never run."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated, corrupt, or a pickle asking for globals outside the allow-list
        text = str(e)
        code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if code:
            raise CheckpointError(f"{path}: refused: it asks to load {code.group(1)}, which is code, not data "
                                  "(a checkpoint holds only tensors and plain values)") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt? {first[:160]})") from None
    if not isinstance(obj, dict) or "model" not in obj or "step" not in obj:
        raise CheckpointError(f"{path}: not an lrtrain checkpoint (expected a dict with model, optimizer, step)")
    return obj
