"""What a sweep costs beyond training: per-job overhead of a sequential sweep, and joblib's parallel speed-up.

    uv run python scripts/bench_sweep.py overhead [--jobs 8] [overrides ...]
    uv run python scripts/bench_sweep.py parallel [--jobs 2] [overrides ...]

overhead: one sequential `lrtrain -m` sweep of the digits default (the LR swept so that every job differs).
A job's wall time is the time from its launch to the next job's launch (Hydra's log stamps) plus its share
of the sweeper's up-front check that every job composes; its overhead is that minus its own `train_seconds`
(composing twice, validating, building, plots, the summary). The first job pays the imports once and the
last has no successor, so both are left out. Prints mean overhead / mean training time (target < 10%).

parallel: the same N-job sweep with Hydra's basic launcher (one job after another, torch's default threads)
and with `hydra/launcher=joblib` (N jobs at once, cores // N torch threads each), timed from launch to exit.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

LAUNCH = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[HYDRA\]\s+#(\d+) :", re.M)
# Hydra's BasicSweeper composes every job once before launching any (and the launcher composes it again)
VALIDATED = re.compile(r"Validated configs of (\d+) jobs in ([\d.]+) seconds")
SWEEPER_LOG = "hydra.verbose=hydra._internal.core_plugins.basic_sweeper"


def sweep(tmp: Path, jobs: int, extra: list[str]) -> tuple[float, str, list[dict]]:
    lrs = ",".join(f"{1e-3 * (1 + i / 100):.6g}" for i in range(jobs))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lrtrain", "-m", f"optimizer.lr={lrs}", *extra,
                           f"hydra.sweep.dir={tmp}"], cwd=tmp, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summaries = [json.loads((tmp / str(i) / "summary.json").read_text()) for i in range(jobs)]
    return wall, proc.stdout + proc.stderr, summaries


def overhead(jobs: int, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, log, summaries = sweep(Path(tmp), jobs, [SWEEPER_LOG, *extra])
    validated = VALIDATED.search(log)
    check = float(validated.group(2)) / int(validated.group(1)) if validated else 0.0
    stamps = {int(n): datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t, n in LAUNCH.findall(log)}
    walls, trains = [], []
    for i in range(1, jobs - 1):
        walls.append((stamps[i + 1] - stamps[i]).total_seconds() + check)
        trains.append(summaries[i]["train_seconds"])
        print(f"job {i}: wall {walls[-1]:.3f} s (of which {check:.3f} s the sweeper's check), "
              f"train {trains[-1]:.3f} s, overhead {walls[-1] - trains[-1]:.3f} s")
    over, train = sum(walls) / len(walls) - sum(trains) / len(trains), sum(trains) / len(trains)
    print(f"mean per-job overhead {over:.3f} s = {100 * over / train:.1f}% of a job's training time "
          f"({train:.2f} s; target < 10%)")


def parallel(jobs: int, extra: list[str]) -> None:
    walls = {}
    for name, launcher in (("sequential", []), ("joblib", ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"])):
        with tempfile.TemporaryDirectory() as tmp:
            walls[name], _, summaries = sweep(Path(tmp), jobs, [*launcher, *extra])
        print(f"{name}: {jobs} jobs in {walls[name]:.2f} s wall (launch to exit), "
              f"torch threads per job {summaries[0]['threads']}, "
              f"train seconds per job {sum(s['train_seconds'] for s in summaries) / jobs:.2f}")
    print(f"speed-up of joblib over sequential: {walls['sequential'] / walls['joblib']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("overhead", "parallel"))
    parser.add_argument("--jobs", type=int, default=None, help="jobs in the sweep (overhead: 8, parallel: 2)")
    parser.add_argument("overrides", nargs="*", help="extra lrtrain overrides")
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(max(3, args.jobs or 8), args.overrides)
    else:
        parallel(args.jobs or 2, args.overrides)


if __name__ == "__main__":
    main()
