"""Training throughput, peak memory and start-up of lrtrain against a bare loop and the idiomatic pipeline.

    uv run python scripts/bench_throughput.py [--mnist-root DIR] [--samples 60000] [--repeats 5]
        [--torchvision-repeats 1] [--startup-repeats 3]

One invocation runs, one after the other, each in a fresh process, on MNIST-shaped data (60,000 28x28 images
written in MNIST's IDX format to a temporary folder, or the real files under --mnist-root), an MLP 784-128-10,
batch 128, Adam (lr 1e-3), a per-step cosine schedule, one epoch:

1. bare: the data pre-loaded as one normalised float tensor, a random permutation, index slicing, no logging;
2. torchvision: datasets.MNIST + ToTensor/Normalize + DataLoader(shuffle=True), as the tutorials write it;
3. lrtrain: the real command, with its default logging and metrics (steps.csv, metrics.csv, TensorBoard,
   plots, checkpoints, validation and test passes).

It prints samples/s (training steps only, data already loaded) and peak resident memory of each process, and
the ratios. Then the time from launch to the first optimizer step, against `python -c "import torch"`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH, LR, HIDDEN = 128, 1e-3, 128
MEAN, STD = 0.1307, 0.3081


# --------------------------------------------------------------------------------------------- children


def _first_step_probe() -> None:
    """With BENCH_FIRST_STEP=<file>, write the wall-clock time of the first optimizer step there and exit."""
    target = os.environ.get("BENCH_FIRST_STEP")
    if not target:
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def hook(*_):
        Path(target).write_text(repr(time.time()))
        os._exit(0)

    register_optimizer_step_post_hook(hook)


def _cosine(step: int, total: int) -> float:
    import math

    return LR * 0.5 * (1 + math.cos(math.pi * step / total))


def child_bare(root: str) -> dict:
    import numpy as np
    import torch
    from torch import nn

    _first_step_probe()
    torch.manual_seed(0)
    raw = Path(root) / "MNIST" / "raw"
    images = np.fromfile(raw / "train-images-idx3-ubyte", dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    labels = np.fromfile(raw / "train-labels-idx1-ubyte", dtype=np.uint8, offset=8)
    x = torch.from_numpy(images).float().div_(255).sub_(MEAN).div_(STD)
    y = torch.from_numpy(labels).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x)
    total = (n + BATCH - 1) // BATCH
    start = time.perf_counter()
    perm = torch.randperm(n)
    for step, i in enumerate(range(0, n, BATCH)):
        idx = perm[i:i + BATCH]
        for group in opt.param_groups:
            group["lr"] = _cosine(step, total)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()
    return {"samples_per_second": n / (time.perf_counter() - start)}


def child_torchvision(root: str) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    _first_step_probe()
    torch.manual_seed(0)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = datasets.MNIST(root, train=True, download=False, transform=transform)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=len(loader))
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for x, y in loader:
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    loss.item()
    return {"samples_per_second": len(dataset) / (time.perf_counter() - start)}


def lrtrain_args(root: str, run_dir: Path) -> list[str]:
    return ["dataset=mnist", f"dataset.root={root}", "dataset.download=false", f"dataset.batch_size={BATCH}",
            "model=mlp", f"model.hidden=[{HIDDEN}]", "optimizer=adam", f"optimizer.lr={LR}",
            "scheduler=cosine", "scheduler.interval=step", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]


def child_lrtrain_probe(args: list[str]) -> None:
    """`lrtrain <args>` in this process, for the first-step probe only."""
    _first_step_probe()
    sys.argv = ["lrtrain", *args]
    from lrtrain.cli import main

    main()


# ----------------------------------------------------------------------------------------------- parent


def run_child(cmd: list[str], env: dict | None = None) -> tuple[str, float]:
    """Run a process; return its stdout and its peak resident memory in MiB (from the kernel's rusage)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, **(env or {})}, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return stdout, usage.ru_maxrss / 1024  # Linux reports KiB


def _child(me: list[str], name: str, root: str) -> dict:
    out, peak = run_child([*me, "--child", name, "--mnist-root", root])
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mib": peak}


def write_mnist_like(root: Path, n: int) -> None:
    """n random 28x28 images (and labels) in MNIST's IDX format: the shape and bytes of the real thing."""
    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", 10_000)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + count.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
            + rng.integers(0, 256, size=count * 784, dtype=np.uint8).tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + count.to_bytes(4, "big") + rng.integers(0, 10, count, dtype=np.uint8).tobytes())


def first_step_seconds(cmd: list[str], repeats: int) -> float:
    """Median wall time from launching `cmd` to its first optimizer step (or to its exit, with no optimizer)."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            stamp = Path(tmp) / "first_step"
            launched = time.time()
            subprocess.run(cmd, env={**os.environ, "BENCH_FIRST_STEP": str(stamp)}, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
            times.append((float(stamp.read_text()) if stamp.exists() else time.time()) - launched)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-root", help="a folder with MNIST/raw/*-ubyte (default: write MNIST-shaped data)")
    parser.add_argument("--samples", type=int, default=60_000, help="training images to write (default 60000)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating bare/lrtrain runs (default 5)")
    parser.add_argument("--torchvision-repeats", type=int, default=1, help="torchvision runs (slow; default 1)")
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument("--child", choices=["bare", "torchvision", "lrtrain"], help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "lrtrain":
        return child_lrtrain_probe(args.rest)
    if args.child:
        result = {"bare": child_bare, "torchvision": child_torchvision}[args.child](args.mnist_root)
        print(json.dumps(result))
        return

    me = [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.mnist_root
        if root is None:
            root = str(Path(tmp) / "data")
            write_mnist_like(Path(root), args.samples)
        print(f"data: {root} ({'real files' if args.mnist_root else f'{args.samples} MNIST-shaped images'}); "
              f"torch threads: {os.cpu_count()} cores visible")
        runs: dict[str, list[dict]] = {"bare": [], "lrtrain": [], "torchvision": []}
        ratios = []
        for r in range(args.repeats):  # alternating, so a noisy minute hits both sides of a pair
            runs["bare"].append(_child(me, "bare", root))
            run_dir = Path(tmp) / f"lrtrain-run-{r}"
            _, peak = run_child([sys.executable, "-m", "lrtrain", *lrtrain_args(root, run_dir)])
            summary = json.loads((run_dir / "summary.json").read_text())
            runs["lrtrain"].append({"samples_per_second": summary["samples_per_second"], "peak_mib": peak})
            if r < args.torchvision_repeats:
                runs["torchvision"].append(_child(me, "torchvision", root))
            ratios.append(runs["lrtrain"][-1]["samples_per_second"] / runs["bare"][-1]["samples_per_second"])
            print(f"pair {r + 1}: bare {runs['bare'][-1]['samples_per_second']:,.0f}, lrtrain "
                  f"{runs['lrtrain'][-1]['samples_per_second']:,.0f} samples/s: {ratios[-1]:.3f}x", flush=True)

        med = {name: {key: statistics.median(r[key] for r in rs) for key in ("samples_per_second", "peak_mib")}
               for name, rs in runs.items() if rs}
        bare = med["bare"]
        print(f"\nmedians of {args.repeats} alternating runs (torchvision: {args.torchvision_repeats})")
        print(f"{'pipeline':<14}{'samples/s':>12}{'vs bare':>10}{'peak MiB':>10}{'vs bare':>10}")
        for name, r in med.items():
            print(f"{name:<14}{r['samples_per_second']:>12,.0f}{r['samples_per_second'] / bare['samples_per_second']:>9.2f}x"
                  f"{r['peak_mib']:>10,.0f}{r['peak_mib'] / bare['peak_mib']:>9.2f}x")
        lr = med["lrtrain"]
        print(f"\nlrtrain / bare loop:   {statistics.median(ratios):.3f}x samples/s, the median of the {len(ratios)} "
              f"pairs' ratios ({', '.join(f'{x:.3f}' for x in sorted(ratios))}; target >= 0.95), "
              f"{lr['peak_mib'] / bare['peak_mib']:.2f}x peak memory (target <= 1.1)")
        if "torchvision" in med:
            print(f"lrtrain / torchvision: {lr['samples_per_second'] / med['torchvision']['samples_per_second']:.1f}x "
                  "samples/s (target >= 10)")

        if args.startup_repeats:
            n = args.startup_repeats
            print(f"\nlaunch to first optimizer step (median of {n}):")
            rows = {
                'python -c "import torch"': first_step_seconds([sys.executable, "-c", "import torch"], n),
                'python -c "import torch, torch._dynamo"': first_step_seconds(
                    [sys.executable, "-c", "import torch, torch._dynamo"], n),
                "bare loop above (MNIST)": first_step_seconds([*me, "--child", "bare", "--mnist-root", root], n),
                # a relative run dir: each repeat runs in a fresh folder (a run dir belongs to one run)
                "lrtrain (the MNIST run above)": first_step_seconds(
                    [*me, "--child", "lrtrain", "--", *lrtrain_args(root, Path("probe"))], n),
                "lrtrain (no arguments: digits)": first_step_seconds(
                    [*me, "--child", "lrtrain", "--", "hydra.run.dir=probe"], n),
            }
            base = rows['python -c "import torch"']
            for name, seconds in rows.items():
                print(f"  {name:<42}{seconds:>6.2f} s  {seconds / base:>5.2f}x import torch")


if __name__ == "__main__":
    main()
