"""The `lrtrain` command: Hydra composes and validates the config, `build` makes the objects, `fit` trains."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lrtrain.config import register, validate


def _config_dir() -> str:
    """The configs inside an installed wheel, else the top-level `configs/` of a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"lrtrain configs not found in {here / 'configs'} or {here.parent / 'configs'}")


register()
_SHOW_TRACEBACK = False  # set by main() from HYDRA_FULL_ERROR


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="config")
def train(cfg: DictConfig) -> Optional[float]:
    """One run. Returns the best monitored value, for Hydra sweepers to optimise."""
    single = HydraConfig.get().mode.name == "RUN"
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = _train(cfg, out_dir)
    except Exception as e:
        if single and not _SHOW_TRACEBACK:  # say it in one line and exit; in a sweep Hydra records the job as failed and goes on
            _exit_with(e)
        raise
    from lrtrain.errors import EXIT_DIVERGED

    if single and summary["status"] == "diverged":
        print(f"lrtrain: diverged: {summary['stop_reason']}; the last good state is in "
              f"{out_dir / 'checkpoints' / 'last.pt'}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    return summary["best_value"]


def _train(cfg: DictConfig, out_dir: Path) -> dict:
    try:
        validate(cfg)
        from lrtrain.build import build

        run = build(cfg, out_dir)
    except Exception as e:
        _record_failure(out_dir, e)
        raise
    from lrtrain.loop import fit

    summary = fit(run)
    if run.progress != "none":
        from rich.console import Console

        from lrtrain.progress import summary_table

        Console().print(summary_table(summary))
    return summary


def _record_failure(out_dir: Path, e: BaseException) -> None:
    """A run that fails before training still leaves a summary.json saying why."""
    from lrtrain.errors import describe
    from lrtrain.writers import write_json_atomic

    if out_dir.is_dir():
        write_json_atomic({"status": "failed", "stop_reason": describe(e)[0], "run_dir": str(out_dir)},
                          out_dir / "summary.json")


def main() -> None:
    """Console entry point: one-line errors and exit codes instead of tracebacks (HYDRA_FULL_ERROR=1 for them)."""
    global _SHOW_TRACEBACK
    _SHOW_TRACEBACK = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra raise, so the error is reported here, once
    try:
        train()
    except Exception as e:
        if _SHOW_TRACEBACK:
            raise
        _exit_with(e)


def _exit_with(e: Exception) -> None:
    from lrtrain.errors import describe

    message, code = describe(e)
    print(f"lrtrain: error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
