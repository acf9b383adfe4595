"""Wall time and accuracy of `lrtrain` with no arguments (the embedded digits default), as a user runs it.

    uv run python scripts/bench_default.py [--repeats 3]

Each repeat is a fresh process (start-up, imports, training, plots and all), timed from launch to exit.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra lrtrain overrides")
    args = parser.parse_args()
    walls, accs = [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lrtrain", "trainer.progress=none", *args.overrides],
                           cwd=tmp, check=True)
            wall = time.perf_counter() - start
            summary = json.loads(next(Path(tmp, "outputs").rglob("summary.json")).read_text())
        walls.append(wall)
        accs.append(summary["final"]["val_acc"])
        print(f"run {i + 1}: wall {wall:.2f} s, train {summary['train_seconds']:.2f} s, "
              f"val_acc {summary['final']['val_acc']:.4f}, best val_loss epoch {summary['best_epoch'] + 1}")
    print(f"median wall {statistics.median(walls):.2f} s (target < 20 s); "
          f"min val_acc {min(accs):.4f} (target >= 0.95)")


if __name__ == "__main__":
    main()
