"""Where lrtrain's configs are: inside an installed wheel, else the top-level `configs/` of a checkout."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"lrtrain configs not found in {here / 'configs'} or {here.parent / 'configs'}")
