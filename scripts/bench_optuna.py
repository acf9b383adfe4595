"""What pruning saves: an Optuna search with the median pruner against the same search without pruning.

    uv run python scripts/bench_optuna.py [--trials 30] [--repeats 3] [overrides ...]

Each repeat runs the same search twice, alternating which goes first: `optimizer.lr` on a log scale in
[1e-4, 1e-1] x `scheduler.gamma` (step schedule) in [0.1, 0.9], TPE seeded with the repeat's number, on the digits
default (20 epochs), once with `hydra/sweeper/pruner=median` and once with `hydra/sweeper/pruner=none`. It reports
each search's wall time (launch to exit), the epochs it trained, its best val_loss (of the trials that ran to the
end) and how many trials were pruned, then the medians over the repeats and the ratio of the wall times. The
repeats' spread of best values is the seed noise the pruned search's best is judged against.
Needs an idle machine: any other busy process slows torch several times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = ["scheduler=step", "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "scheduler.gamma=interval(0.1, 0.9)"]


def search(tmp: Path, pruner: str, trials: int, seed: int, extra: list[str]) -> dict:
    sweep = tmp / f"{pruner}-{seed}"
    cmd = [sys.executable, "-m", "lrtrain", "-m", "hydra/sweeper=optuna", f"hydra/sweeper/pruner={pruner}",
           f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.sampler.seed={seed}", *SPACE,
           "trainer.progress=none", *extra, f"hydra.sweep.dir={sweep}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: some trial diverged or failed, which a search may meet
        sys.exit(f"search failed ({proc.returncode}): {proc.stderr[-2000:]}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="lrtrain", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    complete = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    return {"pruner": pruner, "seed": seed, "wall_s": wall, "epochs": sum(s.get("epochs", 0) for s in summaries),
            "best": min(complete) if complete else float("nan"), "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"), "trials": len(states)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra lrtrain overrides (e.g. trainer.max_epochs=2)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"median": [], "none": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):
            order = ("median", "none") if seed % 2 == 0 else ("none", "median")
            for pruner in order:
                r = search(Path(tmp), pruner, args.trials, seed, args.overrides)
                runs[pruner].append(r)
                print(f"seed {seed} pruner={pruner:6s}: {r['wall_s']:7.1f} s wall, {r['epochs']:4d} epochs, "
                      f"best val_loss {r['best']:.4f}, {r['pruned']} of {r['trials']} pruned, {r['failed']} failed",
                      flush=True)
    med = {p: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "epochs", "best")}
           for p, rs in runs.items()}
    print(f"\nmedian of {args.repeats} repeats, {args.trials} trials each:")
    for p in ("none", "median"):
        bests = ", ".join(f"{r['best']:.4f}" for r in runs[p])
        print(f"  pruner={p:6s}: {med[p]['wall_s']:.1f} s wall, {med[p]['epochs']:.0f} epochs, "
              f"best val_loss {med[p]['best']:.4f} (repeats: {bests})")
    print(f"  median pruner / no pruning: {med['median']['wall_s'] / med['none']['wall_s']:.2f} of the wall time, "
          f"{med['median']['epochs'] / med['none']['epochs']:.2f} of the epochs")


if __name__ == "__main__":
    main()
