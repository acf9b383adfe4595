"""The shakespeare_char recipe against a bare nanoGPT-style loop: tokens per second, and validation loss.

    uv run python scripts/bench_lm.py --path /work/shared/data/shakespeare/input.txt [--steps 300] [--repeats 5]
        [--threads N]
    uv run python scripts/bench_lm.py --quality --path /work/shared/data/shakespeare/input.txt [--steps 2000]
        [--seeds 0,1,2] [--threads N]

Both pipelines train nanoGPT's CPU example on a UTF-8 text file: characters, the first 90% for training; a GPT of
4 layers, 4 heads, 128 wide, block 64, batch 12, no dropout, no biases; AdamW (lr 1e-3, betas 0.9/0.99, weight
decay 0.1 on the >= 2-D tensors); 100 warmup steps as lr * (it + 1) / 101, a cosine to 1e-4 at the last step;
gradient clipping at 1.0; float32; the same number of torch threads. Each run is a fresh process, and the two
pipelines alternate (bare, lrtrain, bare, lrtrain, ...) so that a machine that slows down slows both.

1. bare: this file's own minimal nanoGPT (model.py's layers written out again, not lrtrain's class), trained by
   a loop as nanoGPT's train.py writes it: get_batch (random offsets, torch.stack), get_lr, forward, backward,
   clip, step; no logging, no checkpoints, no validation while training.
2. lrtrain: the real command, `lrtrain +experiment=shakespeare_char dataset.path=... trainer.max_steps=...`,
   with its default loggers (steps.csv, metrics.csv, TensorBoard, curves.png) and checkpoints.

Speed (default): tokens/s of the training steps (batch x block x steps / their seconds; lrtrain's from
summary.json's samples_per_second, which leaves out validation, as the bare loop has none), the median of each
pipeline over --repeats runs, and the ratio lrtrain / bare (the target is >= 0.95).

Quality (--quality): the validation loss after --steps steps (nats per character, over the whole validation split
in consecutive windows of 64 characters, as lrtrain's val_loss), for each seed; the median of each pipeline, their
difference (the target is within 0.03), and the seconds each run took, from launch to exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, BETAS, WEIGHT_DECAY, CLIP = 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0


# ------------------------------------------------------------------------------------------ the bare loop


def get_lr(it: int, max_iters: int) -> float:
    """nanoGPT's train.py, with lr_decay_iters = max_iters."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > max_iters:
        return MIN_LR
    ratio = (it - WARMUP) / (max_iters - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def bare_model(vocab: int):
    """nanoGPT's model.py for bias=False, dropout=0: pre-norm blocks, SDPA causal attention, a tied head."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
            self.c_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)

        def forward(self, x):
            b, t, c = x.size()
            q, k, v = self.c_attn(x).split(N_EMBD, dim=2)
            q, k, v = (z.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(N_EMBD, bias=False), Attention()
            self.ln_2 = nn.LayerNorm(N_EMBD, bias=False)
            self.c_fc, self.gelu = nn.Linear(N_EMBD, 4 * N_EMBD, bias=False), nn.GELU()
            self.c_proj = nn.Linear(4 * N_EMBD, N_EMBD, bias=False)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.c_proj(self.gelu(self.c_fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
            self.h = nn.ModuleList(Block() for _ in range(N_LAYER))
            self.ln_f = nn.LayerNorm(N_EMBD, bias=False)
            self.lm_head = nn.Linear(N_EMBD, vocab, bias=False)
            self.wte.weight = self.lm_head.weight
            self.apply(self._init_weights)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * N_LAYER))

        @staticmethod
        def _init_weights(module):
            if isinstance(module, (nn.Linear, nn.Embedding)):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

        def forward(self, idx, targets):
            pos = torch.arange(idx.size(1), device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    return GPT()


def read_chars(path: str):
    """nanoGPT's data/shakespeare_char/prepare.py: sorted characters, the first 90% for training."""
    import torch

    text = Path(path).read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(len(data) * 0.9)
    return data[:n], data[n:], len(chars)


def child_bare(path: str, steps: int, seed: int, threads: int, quality: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train, val, vocab = read_chars(path)
    model = bare_model(vocab)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS)

    def get_batch():
        ix = torch.randint(len(train) - BLOCK, (BATCH,))
        x = torch.stack([train[i:i + BLOCK] for i in ix])
        y = torch.stack([train[i + 1:i + 1 + BLOCK] for i in ix])
        return x, y

    model.train()
    start = time.perf_counter()
    for it in range(steps):
        for group in opt.param_groups:
            group["lr"] = get_lr(it, steps)
        x, y = get_batch()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
    loss.item()
    seconds = time.perf_counter() - start
    result = {"tokens_per_second": steps * BATCH * BLOCK / seconds, "train_seconds": seconds}
    if quality:  # the whole validation split in consecutive windows, as lrtrain.loop.evaluate reads it
        model.eval()
        n = (len(val) - 1) // BLOCK
        xs, ys = val[:n * BLOCK].view(n, BLOCK), val[1:n * BLOCK + 1].view(n, BLOCK)
        with torch.no_grad():
            total = sum(model(xs[i:i + 64], ys[i:i + 64]).item() * len(xs[i:i + 64]) for i in range(0, n, 64))
        result["val_loss"] = total / n
    return result


# ------------------------------------------------------------------------------------------------ driver


def run_bare(args, seed: int) -> dict:
    started = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", "--path", args.path, "--steps", str(args.steps), "--seed",
           str(seed), "--threads", str(args.threads)] + (["--quality"] if args.quality else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "wall_seconds": time.perf_counter() - started}


def run_lrtrain(args, seed: int, scratch: Path) -> dict:
    run_dir = scratch / f"lrtrain-{seed}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "lrtrain", "+experiment=shakespeare_char", f"dataset.path={args.path}",
           f"trainer.max_steps={args.steps}", f"trainer.seed={seed}", f"trainer.num_threads={args.threads}",
           "trainer.device=cpu", "trainer.progress=none", f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=scratch)
    wall = time.perf_counter() - started
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"tokens_per_second": summary["samples_per_second"] * BLOCK, "train_seconds": summary["train_seconds"],
            "val_loss": summary["final"]["val_loss"], "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", required=True, help="a UTF-8 text file (e.g. tiny Shakespeare's input.txt)")
    parser.add_argument("--quality", action="store_true", help="validation loss after --steps, per seed")
    parser.add_argument("--steps", type=int, help="optimizer steps a run (default: 300; --quality: 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each pipeline, alternating (speed)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (--quality)")
    parser.add_argument("--threads", type=int, default=torch_threads(), help="torch threads in both pipelines")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (2000 if args.quality else 300)
    if args.steps <= WARMUP:
        parser.error(f"--steps must be more than the {WARMUP} warmup steps")
    if args.child:
        print(json.dumps(child_bare(args.path, args.steps, args.seed, args.threads, args.quality)))
        return
    args.path = str(Path(args.path).expanduser().resolve())
    seeds = [int(s) for s in args.seeds.split(",")] if args.quality else [0] * args.repeats
    results: dict[str, list[dict]] = {"bare": [], "lrtrain": []}
    print(f"{'run':<10}{'seed':>5}{'tokens/s':>12}{'train s':>10}{'wall s':>9}{'val_loss':>10}")
    with tempfile.TemporaryDirectory(prefix="bench_lm_") as tmp:
        for seed in seeds:
            for name in ("bare", "lrtrain"):
                r = run_bare(args, seed) if name == "bare" else run_lrtrain(args, seed, Path(tmp))
                results[name].append(r)
                val = f"{r['val_loss']:.4f}" if args.quality else "-"
                print(f"{name:<10}{seed:>5}{r['tokens_per_second']:>12,.0f}{r['train_seconds']:>10.1f}"
                      f"{r['wall_seconds']:>9.1f}{val:>10}", flush=True)
    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k in (
        "tokens_per_second", "val_loss", "wall_seconds", "train_seconds")} for name, rs in results.items()}
    print(f"\n{args.steps} steps, batch {BATCH} x block {BLOCK}, {args.threads} torch threads, float32; medians:")
    for name, m in median.items():
        print(f"  {name:<8} {m['tokens_per_second']:,.0f} tokens/s, {m['train_seconds']:.1f} s training, "
              f"{m['wall_seconds']:.1f} s launch to exit" + (f", val_loss {m['val_loss']:.4f}" if args.quality else ""))
    ratio = median["lrtrain"]["tokens_per_second"] / median["bare"]["tokens_per_second"]
    print(f"  lrtrain / bare tokens/s: {ratio:.3f} (target >= 0.95)")
    if args.quality:
        diff = median["lrtrain"]["val_loss"] - median["bare"]["val_loss"]
        print(f"  val_loss lrtrain - bare: {diff:+.4f} (target within 0.03)")


def torch_threads() -> int:
    """OMP_NUM_THREADS when set, else every CPU this process may use (the driver does not import torch)."""
    return int(os.environ.get("OMP_NUM_THREADS", 0)) or len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
