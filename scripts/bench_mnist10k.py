"""Time to accuracy on real MNIST images: lrtrain's `mnist10k_fast` recipe against the idiomatic pipeline.

    uv run python scripts/bench_mnist10k.py --root /work/shared/data/mnist10k

--root is a folder that torchvision.datasets.MNIST reads with download=False (MNIST/raw/*-ubyte). On
/work/shared/data/mnist10k that is an 8,000-image subset of MNIST ("train") and 2,000 held-out images ("test");
say so wherever the figures are quoted. Both runs are fresh processes timed from launch to exit, and train the
same recipe: the same ConvNet (lrtrain.models.CNN, channels [16, 32], hidden 128), Adam lr 3e-3, batch 64,
50 steps of linear warmup from 0.1x then a per-step cosine decay to 0, 3 epochs, 5% of "train" held out for
validation (evaluated every epoch in both), and test accuracy at the end.

1. lrtrain +experiment=mnist10k_fast dataset.root=<root>   (its default logging, checkpoints and plots on)
2. the idiomatic torchvision pipeline: datasets.MNIST + ToTensor/Normalize + random_split + DataLoader(shuffle)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS, BATCH, LR, WARMUP, START_FACTOR, VAL_FRACTION = 3, 64, 3e-3, 50, 0.1, 0.05


def idiomatic(root: str) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    from lrtrain.models import CNN

    torch.manual_seed(0)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    full = datasets.MNIST(root, train=True, download=False, transform=transform)
    n_val = round(len(full) * VAL_FRACTION)
    train, val = random_split(full, [len(full) - n_val, n_val], generator=torch.Generator().manual_seed(0))
    test = datasets.MNIST(root, train=False, download=False, transform=transform)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True)
    model = CNN((1, 28, 28), 10, channels=[16, 32], hidden=128)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    total = EPOCHS * len(loader)

    def factor(step: int) -> float:
        if step < WARMUP:
            return START_FACTOR + (1 - START_FACTOR) * step / WARMUP
        return (1 + math.cos(math.pi * (step - WARMUP) / (total - WARMUP))) / 2

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    loss_fn = nn.CrossEntropyLoss()

    @torch.no_grad()
    def accuracy(dataset) -> float:
        model.eval()
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(dataset, batch_size=1000))
        model.train()
        return correct / len(dataset)

    for epoch in range(EPOCHS):
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{EPOCHS}  loss {loss.item():.4f}  val_acc {accuracy(val):.4f}", flush=True)
    return {"test_acc": accuracy(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder with MNIST/raw/*-ubyte (torchvision layout)")
    parser.add_argument("--idiomatic", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.idiomatic:
        print(json.dumps(idiomatic(args.root)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lrtrain", "+experiment=mnist10k_fast", f"dataset.root={args.root}",
                        "trainer.progress=plain", f"hydra.run.dir={tmp}/run"], check=True)
        lrtrain_wall = time.perf_counter() - start
        summary = json.loads(Path(tmp, "run", "summary.json").read_text())
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--root", args.root, "--idiomatic"], check=True,
                         capture_output=True, text=True).stdout
    idiomatic_wall = time.perf_counter() - start
    print(out.strip())
    idiomatic_acc = json.loads(out.strip().splitlines()[-1])["test_acc"]

    print(f"\nsame recipe, {EPOCHS} epochs, launch to exit (data: {args.root}):")
    print(f"  lrtrain +experiment=mnist10k_fast   {lrtrain_wall:6.1f} s wall ({summary['train_seconds']:.1f} s "
          f"in fit)  test_acc {summary['test']['test_acc']:.4f}")
    print(f"  idiomatic torchvision pipeline      {idiomatic_wall:6.1f} s wall  test_acc {idiomatic_acc:.4f}")
    print(f"  speed-up {idiomatic_wall / lrtrain_wall:.2f}x")


if __name__ == "__main__":
    main()
