"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with weights_only=True."""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from lrtrain.errors import CheckpointError, write_error
from lrtrain.signals import STOP
from lrtrain.writers import atomic_path


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write `path` whole or not at all, and on disk when this returns (writers.atomic_path with fsync): a kill
    at any instant leaves the old file or the new one.

    The checkpoint is serialised in memory and written in one call: torch's own file writer reports a full disk
    as an `enforce fail` RuntimeError without the errno ("unexpected pos ...", "file write failed"), while a
    plain write raises the OSError that says ENOSPC.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a second Ctrl-C stops right after the write, not in the middle of it (nor of torch's serialiser)
        with STOP.shielded(), atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            f.write(buffer.getbuffer())
    except OSError as e:
        raise write_error(path, e, _KEPT) from None


_KEPT = "the previous checkpoint, if any, is intact"


def save_copies(obj: dict[str, Any], paths: list[Path]) -> None:
    """Save once to `paths[0]`, then give the other paths the same content, each replaced atomically."""
    save_atomic(obj, paths[0])
    for path in paths[1:]:
        try:
            with atomic_path(path) as tmp:
                tmp.unlink(missing_ok=True)
                os.link(paths[0], tmp)  # a hard link: no second write; a later replace of one leaves the other
        except OSError:  # no hard links on this file system
            save_atomic(obj, path)


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files of writes that were killed before their rename (`.<name>.*.tmp`)."""
    for tmp in folder.glob(".*.tmp"):
        if tmp.is_dir() and not tmp.is_symlink():  # not one of lrtrain's: it writes files only
            raise CheckpointError(f"{tmp}: a folder named like a checkpoint's temporary file, which lrtrain removes "
                                  f"from {folder} before it writes there; move it elsewhere")
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint as data only: a pickle that carries code is refused, never run."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated, corrupt, or a pickle asking for globals outside the allow-list
        text = str(e)
        code = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", text)
        if code:
            raise CheckpointError(f"{path}: refused: it asks to load {code.group(1)}, which is code, not data "
                                  "(a checkpoint holds only tensors and plain values)") from None
        if text.startswith("Weights only load failed"):  # torch's advice (weights_only=False) would run it
            raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, or more than tensors and plain "
                                  f"values: {_unpickler_reason(text)})") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt? {first[:160]})") from None
    if not isinstance(obj, dict) or "model" not in obj or "step" not in obj:
        raise CheckpointError(f"{path}: not an lrtrain checkpoint (expected a dict with model, optimizer, step)")
    return obj


def _unpickler_reason(text: str) -> str:
    """The line of torch's weights-only refusal that says what was refused, without its advice to load the
    file unsafely."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
    return (lines[0] if lines else "refused by the weights-only unpickler")[:160]


# What a resume reads from a checkpoint, and the type each must have.
_LAYOUT = {"model": dict, "optimizer": dict, "schedule": dict, "early_stopping": dict, "step": int, "epoch": int,
           "position": dict, "rng": dict, "config": dict}


def check_layout(path: Path, ckpt: dict[str, Any], position_keys: set[str]) -> None:
    """A checkpoint a resume can use: every part it reads, of the type it reads, and a position with exactly
    this version's fields (a missing one would silently restart its count from a default)."""
    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not an lrtrain checkpoint of this version ({why})")

    for key, kind in _LAYOUT.items():
        if key not in ckpt:
            raise refuse(f"missing {key!r}")
        if not isinstance(ckpt[key], kind):
            raise refuse(f"its {key!r} is a {type(ckpt[key]).__name__}, expected a {kind.__name__}")
    unknown = sorted(set(ckpt["position"]) - position_keys)
    if unknown:
        raise refuse(f"its position has {', '.join(map(repr, unknown))}, unknown here")
    lacking = sorted(position_keys - set(ckpt["position"]))
    if lacking:
        raise refuse(f"its position lacks {', '.join(map(repr, lacking))}")
    missing = [k for k in ("python", "numpy", "torch") if k not in ckpt["rng"]]
    if missing:
        raise refuse(f"its rng lacks {', '.join(map(repr, missing))}")
