"""The sweep report's two doors: the Hydra callback that reports every sweep as it ends (named by
`_target_` in configs/config.yaml and in every sweep's saved config, so it stays at this path) and the
`lrtrain-report` command that rebuilds a report from disk. The report itself is lrtrain/sweep/report.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from hydra.experimental.callback import Callback

from lrtrain.plots import plot_curves
from lrtrain.summary import SUCCEEDED, Status, Summary
from lrtrain.sweep.report import (capped, job_dirs, report_settings, report_sweep, settings_of, sweep_rows,
                                  unreported)


class SweepReport(Callback):
    """Hydra callback (configs/config.yaml, `hydra.callbacks`): report every sweep when it ends, as set by the
    composed config's `report` node.

    It runs in the launching process whatever the launcher, and only reads the jobs' folders, like
    `lrtrain-report`. `failed` tells `lrtrain`'s entry point to exit non-zero.
    """

    failed: list[dict] = []  # the last sweep's rows that did not complete
    sweep_dir: Optional[Path] = None

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # first what decides the exit status: Hydra turns a callback's exception into a warning
        SweepReport.sweep_dir = sweep_dir
        rows = sweep_rows(sweep_dir)
        SweepReport.failed = [r for r in rows if r["status"] not in (*SUCCEEDED, Status.PRUNED)]
        node = config.get("report")
        report_sweep(sweep_dir, report_settings(node) if node is not None else None, rows=rows)
        end_logger_sweeps(config, sweep_dir, succeeded=not SweepReport.failed)


def end_logger_sweeps(config, sweep_dir: Path, succeeded: bool) -> None:
    """Let each logger that groups a sweep's jobs (one with an `end_sweep`, like MLflow's parent run) close it."""
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    for node in (config.get("logger") or {}).values():
        end_sweep = getattr(get_object(node._target_), "end_sweep", None)
        if end_sweep is not None:
            end_sweep(sweep_dir, succeeded, **{k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
                                               if k != "_target_"})


def main(argv: Optional[list[str]] = None) -> None:
    """`lrtrain-report DIR [DIR ...]`: rebuild a run's curves.png, or a sweep's tables and plots, from disk."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="lrtrain-report", description=main.__doc__.split(":", 1)[1].strip(),
        epilog="Several folders are combined into one report, written to --out.")
    parser.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                        help="a run folder (with summary.json), or sweep folders (and runs) to combine")
    parser.add_argument("--by", metavar="KEY", help="plot the monitored metric against KEY in lr_sensitivity.png "
                        "(default: the jobs' report.x)")
    parser.add_argument("--replicate-keys", metavar="KEY[,KEY]", help="jobs differing only in these keys are "
                        "one configuration (default: the jobs' report.replicate_keys)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where the report goes (default: the sweep's own "
                        "folder; for several folders, outputs/reports/<date>/<time>)")
    parser.add_argument("--no-plots", action="store_true", help="only the table and the CSV files")
    args = parser.parse_args(argv)

    from lrtrain.errors import InputFileError

    def fail(message: str) -> None:
        print(f"lrtrain-report: error: {message}", file=sys.stderr)
        sys.exit(2)

    try:
        _report(args, fail)
    except InputFileError as e:  # a job's file that lrtrain did not write as it is
        fail(str(e))


def _report(args: Any, fail: Callable[[str], None]) -> None:
    """main's work on the parsed arguments; `fail` ends the program with a one-line error."""
    import sys

    from rich.console import Console

    from lrtrain.errors import InputFileError

    for path in args.dirs:
        if not path.is_dir():
            fail(f"{path}: no such folder")
    path: Path = args.dirs[0]
    if len(args.dirs) == 1 and ((path / "summary.json").is_file() or (path / "metrics.csv").is_file()):
        from lrtrain.progress import summary_table

        if not args.no_plots and (path / "metrics.csv").is_file():
            print(f"wrote {plot_curves(path)}")
        from lrtrain.summary import read_checked

        summary = (Summary.from_dict(read_checked(path / "summary.json")) if (path / "summary.json").is_file()
                   else None)
        if summary is not None and summary.epochs is not None:
            Console().print(summary_table(summary))
        elif summary is not None:  # a run that failed before training, or an LR range test
            print(f"{path}: {capped(summary.status)}" +
                  (f": {capped(summary.stop_reason)}" if summary.stop_reason else ""))
        return
    for d in args.dirs:
        if not (d / ".hydra").is_dir() and not job_dirs(d):
            fail(f"{d}: not a run folder (no summary.json or metrics.csv) nor a sweep folder (no job folders "
                 "with .hydra/)")
    orphans = [p for d in args.dirs if not (d / ".hydra").is_dir() for p in unreported(d)]
    if orphans:
        print(f"lrtrain-report: left out {len(orphans)} folder{'s' * (len(orphans) > 1)} with a summary.json but "
              f"no .hydra/ (what they ran is unknown): {', '.join(map(str, orphans[:5]))}"
              f"{', ...' if len(orphans) > 5 else ''}", file=sys.stderr)
    rows = sweep_rows(args.dirs)
    from dataclasses import replace

    try:
        settings = settings_of(rows)
    except InputFileError:
        raise
    except Exception as e:  # a report node this lrtrain cannot read (edited, or from another version)
        from lrtrain.errors import describe

        fail(f"the jobs' report settings (.hydra/config.yaml): {describe(e)[0]}")
    if args.by:
        settings = replace(settings, x=args.by)
    if args.replicate_keys:
        settings = replace(settings, replicate_keys=[k.strip() for k in args.replicate_keys.split(",") if k.strip()])
    out = args.out
    if out is None and len(args.dirs) > 1:
        import time

        out = Path("outputs", "reports", time.strftime("%Y-%m-%d"), time.strftime("%H-%M-%S"))
    study = report_sweep(args.dirs, settings, out_dir=out, plots=not args.no_plots, rows=rows)
    if args.by and not args.no_plots and study.sensitivity_key is None:
        why = ("it is a replicate key (--replicate-keys)" if args.by in settings.replicate_keys else
               f"it is not varied between configurations (varied: {', '.join(study.keys) or 'nothing'})")
        print(f"lrtrain-report: no lr_sensitivity.png by {args.by}: {why}", file=sys.stderr)
