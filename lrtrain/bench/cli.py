"""`lrtrain-bench`: run a suite, rebuild a run's report from disk, or score any table of times.

  lrtrain-bench run suite=mini submissions=[adamw_cosine,schedulefree_adamw] [bench.key=value ...]
  lrtrain-bench report outputs/bench/<date>/<time>
  lrtrain-bench score times.csv [--r-max 4]

Bad input is one line on stderr naming the file, key or value, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from lrtrain.bench.scoring import BenchInputError, R_MAX

EXIT_INPUT = 2  # lrtrain's exit status for a bad config value (lrtrain/errors.py), kept for bad files too


def _score(path: Path, r_max: float) -> None:
    from lrtrain.bench.scoring import read_times, scores, scores_path, write_scores

    times = read_times(path)
    by_name = scores(times, r_max)
    width = max(map(len, by_name))
    for name, value in by_name.items():
        print(f"{name:<{width}} {value:.4f}")
    write_scores(scores_path(path), times, by_name)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="lrtrain-bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run submissions on a suite and score them (configs/bench.yaml)")
    run.add_argument("overrides", nargs="*", help="suite=<name> submissions=[a,b] trials=N studies=S ruleset=external|self "
                                                  "...; any other override goes to every lrtrain run")
    report = sub.add_parser("report", help="rebuild a run's times, scores, plot and tables from its dir")
    report.add_argument("dir", type=Path, help="the run's output dir (outputs/bench/<date>/<time>)")
    score = sub.add_parser("score", help="score a CSV of times (submission, one column per workload)")
    score.add_argument("times", type=Path, help="CSV: submission, then a time per workload (inf or empty: "
                                                "target not reached)")
    score.add_argument("--r-max", type=float, default=R_MAX, help=f"upper limit of the integral (default {R_MAX:g})")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            import signal

            from lrtrain.bench.run import default_out, run as run_plan
            from lrtrain.bench.suite import load_plan

            # SIGTERM as an exception, so that the running sweep is stopped with it instead of left behind
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

            plan, out = load_plan(args.overrides)
            run_plan(plan, Path(out) if out else default_out())
        elif args.command == "report":
            from lrtrain.bench.run import report as rebuild

            rebuild(args.dir)
        elif args.command == "score":
            if not args.r_max > 1:
                raise BenchInputError(f"--r-max={args.r_max}: must be > 1")
            _score(args.times, args.r_max)
    except BenchInputError as e:
        print(f"lrtrain-bench: {e}", file=sys.stderr)
        sys.exit(EXIT_INPUT)
