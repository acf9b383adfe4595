"""How long `lrtrain-report` takes on a 64-job sweep with seeds (target: under 3 s, start-up included).

    uv run python scripts/bench_report.py [--lrs 8] [--seeds 4] [--repeats 5]

The sweep folder is built from one real `lrtrain` run of the digits default (20 epochs): its job folder is
copied once per job of an `optimizer.lr` x `scheduler=constant,cosine` x `trainer.seed` grid, and each copy
gets its own `.hydra/overrides.yaml`, `.hydra/config.yaml`, `.hydra/hydra.yaml` choice, `summary.json`,
`metrics.csv` and `steps.csv` (the run's curves scaled per LR and seed, the LR column following the job's
schedule), one job failed and one diverged, so the report reads exactly what a sweep leaves.

Then, alternating, `repeats` times each: the full report (`lrtrain-report DIR`: tables, CSVs, sweep.png,
lr_sensitivity.png), the same without figures (`--no-plots`), and the reference, a bare start-up
(`python -c "import lrtrain.sweep.report"`). Prints the median wall time of each.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPORT = str(Path(sys.executable).with_name("lrtrain-report"))


def template_run(tmp: Path) -> Path:
    run = tmp / "template"
    proc = subprocess.run([sys.executable, "-m", "lrtrain", "trainer.progress=none", "logger=[csv]",
                           "logger.csv.plots=false", f"hydra.run.dir={run}"], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the template run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return run


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_rows(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_job(template: Path, job: Path, lr: float, schedule: str, seed: int, status: str) -> None:
    shutil.copytree(template, job, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    hydra = job / ".hydra"
    overrides = [f"optimizer.lr={lr!r}", f"scheduler={schedule}", f"trainer.seed={seed}",
                 "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = yaml.safe_load((hydra / "config.yaml").read_text())
    config["optimizer"]["lr"], config["trainer"]["seed"] = lr, seed
    (hydra / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    hydra_cfg = yaml.safe_load((hydra / "hydra.yaml").read_text())
    hydra_cfg["hydra"]["runtime"]["choices"]["scheduler"] = schedule
    (hydra / "hydra.yaml").write_text(yaml.safe_dump(hydra_cfg, sort_keys=False))

    # A loss curve that is best near lr = 3e-3, a little better with cosine, and moves with the seed.
    quality = 1 + 0.6 * math.log10(lr / 3e-3) ** 2 - (0.1 if schedule == "cosine" else 0.0)
    noise = 1 + 0.05 * math.sin(7.3 * seed + 1000 * lr)
    scale = quality * noise
    header, rows = read_rows(job / "steps.csv")
    total = len(rows)
    for i, row in enumerate(rows):
        factor = 1.0 if schedule == "constant" else 0.5 * (1 + math.cos(math.pi * i / total))
        row[header.index("lr")] = repr(lr * factor)
        row[header.index("loss")] = repr(float(row[header.index("loss")]) * scale)
    write_rows(job / "steps.csv", header, rows)
    header, rows = read_rows(job / "metrics.csv")
    for row in rows:
        for col in ("train_loss", "val_loss"):
            row[header.index(col)] = repr(float(row[header.index(col)]) * scale)
        for col in ("train_acc", "val_acc"):
            row[header.index(col)] = repr(1 - (1 - float(row[header.index(col)])) * scale)
    write_rows(job / "metrics.csv", header, rows)

    summary = json.loads((job / "summary.json").read_text())
    values = [dict(zip(header, map(float, row))) for row in rows]
    best = min(range(len(values)), key=lambda e: values[e]["val_loss"])
    summary.update(status=status, best_epoch=best, best_value=values[best]["val_loss"], seed=seed,
                   final={**values[-1], "epoch": len(values) - 1}, run_dir=str(job))
    if status == "failed":
        summary = {"status": "failed", "stop_reason": "optimizer.lr: a job that failed", "run_dir": str(job)}
    elif status == "diverged":
        summary["stop_reason"] = "the training loss became nan at step 12"
    (job / "summary.json").write_text(json.dumps(summary, indent=2))


def build_sweep(tmp: Path, lrs: int, seeds: int) -> tuple[Path, int]:
    template = template_run(tmp)
    sweep = tmp / "sweep"
    sweep.mkdir()
    grid = [(1e-4 * 10 ** (3 * i / max(1, lrs - 1)), schedule, seed)
            for i in range(lrs) for schedule in ("constant", "cosine") for seed in range(seeds)]
    for n, (lr, schedule, seed) in enumerate(grid):
        status = "failed" if n == 1 else "diverged" if n == len(grid) - 1 else "completed"
        make_job(template, sweep / str(n), float(f"{lr:.3g}"), schedule, seed, status)
    return sweep, lrs * 2


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=int, default=8, help="learning rates (x 2 schedules x seeds jobs)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep, configurations = build_sweep(Path(tmp), args.lrs, args.seeds)
        jobs = len([p for p in sweep.iterdir() if p.is_dir()])
        variants = {"report": [REPORT, str(sweep)], "report --no-plots": [REPORT, "--no-plots", str(sweep)],
                    "start-up (import lrtrain.sweep.report)": [sys.executable, "-c", "import lrtrain.sweep.report"]}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, cmd in variants.items():
                times[name].append(timed(cmd))
        with open(sweep / "study_summary.csv", newline="") as f:
            found = len(list(csv.DictReader(f)))
        if found != configurations:
            sys.exit(f"study_summary.csv has {found} configurations, expected {configurations}")
        for png in ("sweep.png", "lr_sensitivity.png"):
            if not (sweep / png).is_file():
                sys.exit(f"the report wrote no {png}")
    print(f"{jobs} jobs, {configurations} configurations, median of {args.repeats} alternating runs:")
    for name, walls in times.items():
        print(f"  {name}: {statistics.median(walls):.2f} s wall (runs: {', '.join(f'{w:.2f}' for w in walls)})")
    full = statistics.median(times["report"])
    print(f"report: {full:.2f} s ({'meets' if full < 3 else 'misses'} the target of < 3 s)")


if __name__ == "__main__":
    main()
