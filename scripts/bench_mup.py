"""Does the best Adam LR stay put across width under μP and move under SP? The published μP picture, measured.

    uv run python scripts/bench_mup.py --root /work/shared/data/mnist10k [--widths 64,128,256,512,1024]
        [--lrs 1e-4,...] [--seeds 0,1,2] [--epochs 2] [--out bench_mup]

--root is a folder that torchvision.datasets.MNIST reads with download=False (MNIST/raw/*-ubyte). On
/work/shared/data/mnist10k that is an 8,000-image subset of MNIST; say so wherever the figures are quoted.

One `lrtrain -m` sweep on the fused launcher (each width's LR x seed jobs train as one vectorized model):
an MLP of two hidden layers of each width, Adam over the LR grid (default: x sqrt(10) steps from 1e-4 to 1e-1),
each seed, under model.parametrization=sp and mup (base_width: the smallest width, where μP equals SP), for
--epochs epochs. lrtrain's own sweep report then picks each width's best LR by mean best val_loss over the
seeds (transfer.csv, lr_transfer.png in the sweep dir). This prints the table of best LRs per width, their
shift from the smallest width's in grid steps, and whether the goal holds: under μP the best LR moves by at
most one grid step across the widths, under SP by two or more. It writes the table to <out>/bench_mup.csv.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

GRID = "1e-4,3.16e-4,1e-3,3.16e-3,1e-2,3.16e-2,1e-1"  # x sqrt(10) steps (10 ** (k / 2), to 3 digits)


def sweep(args: argparse.Namespace, sweep_dir: Path) -> float:
    """Run the sweep; return its wall time in seconds."""
    widths = args.widths.split(",")
    cmd = [str(Path(sys.executable).with_name("lrtrain")), "-m", "hydra/launcher=fused", "dataset=mnist",
           f"dataset.root={args.root}", "dataset.download=false", "model=mlp",
           "model.hidden=" + ",".join(f"[{w},{w}]" for w in widths), "model.parametrization=sp,mup",
           f"model.base_width={min(int(w) for w in widths)}", "optimizer=adam", f"optimizer.lr={args.lrs}",
           f"trainer.seed={args.seeds}", f"trainer.max_epochs={args.epochs}", "trainer.progress=none",
           "logger=[csv]", f"hydra.sweep.dir={sweep_dir}"]
    print(" ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL if args.quiet else None)
    if done.returncode != 0:
        sys.exit(f"bench_mup: the sweep exited with {done.returncode}; see {sweep_dir}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="a torchvision MNIST root (MNIST/raw/*-ubyte)")
    parser.add_argument("--widths", default="64,128,256,512,1024")
    parser.add_argument("--lrs", default=GRID, help="the Adam LR grid, comma-separated, ascending")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="bench_mup", help="where the sweep and bench_mup.csv go")
    parser.add_argument("--quiet", action="store_true", help="hide the sweep's own output")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    seconds = sweep(args, out / "sweep")

    with open(out / "sweep" / "transfer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = {(r["model.parametrization"], float(r["width"])): r for r in rows}
    widths = sorted({w for _, w in table})
    lines = []
    print(f"\nbest Adam LR per width (mean best val_loss over seeds {args.seeds}; shift in grid steps of "
          f"{args.lrs}); {seconds:.0f} s")
    print(f"{'width':>6}  {'SP best lr':>10} {'shift':>5} {'val_loss':>9}   {'μP best lr':>10} {'shift':>5} {'val_loss':>9}")
    for w in widths:
        sp, mu = table.get(("sp", w)), table.get(("mup", w))
        cells = []
        for r in (sp, mu):
            cells += ([float(r["best_optimizer.lr"]), int(r["grid_steps_from_smallest"]), float(r["mean"])]
                      if r else [float("nan"), 0, float("nan")])
        lines.append({"width": int(w), "sp_best_lr": cells[0], "sp_shift": cells[1], "sp_val_loss": cells[2],
                      "mup_best_lr": cells[3], "mup_shift": cells[4], "mup_val_loss": cells[5]})
        print(f"{int(w):>6}  {cells[0]:>10.3g} {cells[1]:>+5d} {cells[2]:>9.4f}   {cells[3]:>10.3g} {cells[4]:>+5d} "
              f"{cells[5]:>9.4f}")
    with open(out / "bench_mup.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)
    spread = {p: max(r[f"{p}_shift"] for r in lines) - min(r[f"{p}_shift"] for r in lines) for p in ("sp", "mup")}
    goal = spread["mup"] <= 1 and spread["sp"] >= 2
    print(f"best-LR range across widths: SP {spread['sp']} grid steps, μP {spread['mup']}; goal (μP <= 1, SP >= 2) "
          f"{'met' if goal else 'not met'}; {out / 'bench_mup.csv'}, {out / 'sweep' / 'lr_transfer.png'}")


if __name__ == "__main__":
    main()
