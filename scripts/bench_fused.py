"""Fused sweeps against the default launcher, and how a fused group grows with its replicas.

    uv run python scripts/bench_fused.py sweep [--jobs 16] [--epochs 20] [--repeats 3] [overrides ...]
    uv run python scripts/bench_fused.py growth [--replicas 1,2,4,8,16,32,64] [--epochs 20] [overrides ...]

sweep: an N-job LR sweep of the digits default (`optimizer.lr` over N values), run as `lrtrain -m` with
`hydra/launcher=fused` and with `hydra/launcher=lrtrain` (the default), alternating, `--repeats` times each.
Prints, as medians: the training phase (fused: the group's span, the largest job `train_seconds`, every job
of the group is trained in it; default: the sum of the N jobs' `train_seconds`) and launch to exit; and their
ratios (targets: training >= 6x, whole sweep >= 3x on the 2-core CPU).

growth: one fused group of K replicas (K LRs), trained in a fresh process per K: training seconds, seconds
per replica, and the process's peak memory (peak RSS; on CUDA the peak allocated device memory too), with
the memory each replica adds over one.

Run it on an idle machine: every figure is a wall-clock time.
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

QUIET = ["trainer.progress=none"]


def lrs(n: int) -> str:
    """n learning rates spread log-uniformly over 1e-4 .. 1e-2."""
    return ",".join(f"{1e-4 * 100 ** (i / max(n - 1, 1)):.6g}" for i in range(n))


def run_sweep(tmp: Path, launcher: str, jobs: int, epochs: int, extra: list[str]) -> tuple[float, float]:
    """(launch to exit, training phase) in seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lrtrain", "-m", f"hydra/launcher={launcher}",
                           f"optimizer.lr={lrs(jobs)}", f"trainer.max_epochs={epochs}", *QUIET, *extra,
                           f"hydra.sweep.dir={tmp}"], cwd=tmp, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{launcher} sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
    seconds = [json.loads((tmp / str(i) / "summary.json").read_text())["train_seconds"] for i in range(jobs)]
    return wall, (max(seconds) if launcher == "fused" else sum(seconds))


def sweep(jobs: int, epochs: int, repeats: int, extra: list[str]) -> None:
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "train": []} for name in ("fused", "lrtrain")}
    for r in range(repeats):
        for launcher in ("fused", "lrtrain") if r % 2 == 0 else ("lrtrain", "fused"):
            with tempfile.TemporaryDirectory() as tmp:
                wall, train = run_sweep(Path(tmp), launcher, jobs, epochs, extra)
            times[launcher]["wall"].append(wall)
            times[launcher]["train"].append(train)
            print(f"  run {r + 1}/{repeats} {launcher:>7}: training {train:7.2f} s, launch to exit {wall:7.2f} s",
                  file=sys.stderr)
    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    print(f"\n{jobs}-job LR sweep of the digits default, {epochs} epochs, median of {repeats} alternating runs\n")
    print("| | default launcher (`hydra/launcher=lrtrain`) | fused (`hydra/launcher=fused`) | ratio |")
    print("|---|---|---|---|")
    for key, label in (("train", "training phase (s)"), ("wall", "launch to exit (s)")):
        a, b = med["lrtrain"][key], med["fused"][key]
        print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.1f}x |")


def growth(replicas: list[int], epochs: int, extra: list[str]) -> None:
    rows = []
    for k in replicas:
        proc = subprocess.run([sys.executable, __file__, "_child", str(k), str(epochs), *extra],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"K={k} failed: {proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  K={k}: {rows[-1]}", file=sys.stderr)
    base = rows[0]
    print(f"\nOne fused group of K replicas of the digits default, {epochs} epochs, one process per K\n")
    cuda = any(r["cuda_peak_mb"] is not None for r in rows)
    print("| replicas | training (s) | per replica (s) | peak RSS (MB) | per extra replica (MB) |"
          + (" peak CUDA (MB) |" if cuda else ""))
    print("|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in rows:
        extra_mb = (r["rss_mb"] - base["rss_mb"]) / (r["k"] - base["k"]) if r["k"] > base["k"] else 0.0
        print(f"| {r['k']} | {r['seconds']:.2f} | {r['seconds'] / r['k']:.3f} | {r['rss_mb']:.0f} | {extra_mb:.2f} |"
              + (f" {r['cuda_peak_mb']:.0f} |" if cuda else ""))


def _child(k: int, epochs: int, extra: list[str]) -> None:
    """One fused group of k replicas, in this process; prints one JSON line."""
    import resource

    import torch
    from hydra import compose, initialize_config_dir

    from lrtrain.build import build
    from lrtrain.config import register, validate
    from lrtrain.sweep.fused import fit_fused
    from lrtrain.paths import config_dir

    register()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, lr in enumerate(lrs(k).split(",")):
            with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
                cfg = compose(config_name="config", overrides=[f"optimizer.lr={lr}", f"trainer.max_epochs={epochs}",
                                                               "logger=[csv]", "logger.csv.plots=false", *QUIET,
                                                               *extra])
            validate(cfg)
            runs.append(build(cfg, Path(tmp) / str(i)))
        cuda = runs[0].device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        results = fit_fused(runs)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    bad = [r for r in results if isinstance(r, BaseException) or r.status != "completed"]
    if bad:
        sys.exit(f"{len(bad)} replicas did not complete: {bad[:2]}")
    print(json.dumps({"k": k, "seconds": round(seconds, 3),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--jobs", type=int, default=16)
    s.add_argument("--epochs", type=int, default=20)
    s.add_argument("--repeats", type=int, default=3)
    g = sub.add_parser("growth")
    g.add_argument("--replicas", default="1,2,4,8,16,32,64")
    g.add_argument("--epochs", type=int, default=20)
    args, extra = parser.parse_known_args()
    if args.what == "sweep":
        sweep(args.jobs, args.epochs, args.repeats, extra)
    else:
        growth([int(k) for k in args.replicas.split(",")], args.epochs, extra)


if __name__ == "__main__":
    main()
