"""What batched augmentation costs per training batch, against the rest of a training step.

    uv run python scripts/bench_augment.py [--device cpu|cuda] [--iters 200]

Times, per batch: the augmentation alone (digits-like 8x8 glyphs, batch 32; CIFAR-like 32x32 natural images,
batch 256), and a plain MLP training step on the same batch; prints their ratio. The augmentation draws
per-sample shifts, flips and angles in one batched operation, so the ratio should stay well under 1.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from lrtrain.regularization import BatchAugment


def per_call(fn, iters: int, device: torch.device) -> float:
    for _ in range(10):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    device = torch.device(args.device)
    for kind, shape, batch in (("digits", (1, 8, 8), 32), ("natural", (3, 32, 32), 256)):
        x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        augment = BatchAugment(kind, shape, max_shift=0.125, flip=None, rotation=None)  # the kind's defaults
        model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
        opt = torch.optim.Adam(model.parameters())

        def step() -> None:
            loss = nn.functional.cross_entropy(model(x.float()), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_aug, t_step = per_call(lambda: augment(x), args.iters, device), per_call(step, args.iters, device)
        print(f"{kind} {tuple(x.shape)} on {device}: augment {t_aug * 1e3:.3f} ms, MLP step {t_step * 1e3:.3f} ms, "
              f"ratio {t_aug / t_step:.2f}")


if __name__ == "__main__":
    main()
