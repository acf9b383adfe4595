"""Cooldown forks against full runs: one constant-LR run with 4 forks vs 4 full cosine (or WSD) runs of the
same lengths, over seeds; and the constant run's EMA at each fork's end.

    uv run python scripts/bench_cooldown.py --root /work/shared/data/mnist10k --out bench_cooldown
    uv run python scripts/bench_cooldown.py --steps 60 --seeds 0,1 --out /tmp/tiny      # digits, a quick check

The parent trains `--steps` steps at a constant LR (with averaging=ema, which does not change its raw weights) and
keeps checkpoints at `--at` (percentages of its run); each fork decays over `--cooldown` of the steps before it
(`--shape`). The full runs train S + D steps from scratch with `--full` (cosine to 0, or wsd decaying over the
same D steps), one per seed. Printed: each fork's final val_loss against its full runs' mean and t-interval, the
parent's EMA at S + D, and the cost in optimizer steps (the parent plus the cooldowns, against the full runs of
one seed). Everything lands in `--out`: the runs, cooldown.png (the fork sweep's report) and results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path


def lrtrain(*overrides: str, cwd: Path) -> None:
    flags = [o for o in overrides if o == "-m"]  # Hydra's multirun flag goes before the overrides
    overrides = tuple(o for o in overrides if o != "-m")
    subprocess.run([sys.executable, "-m", "lrtrain", *flags, "trainer.progress=none", "logger=[csv]", *overrides],
                   cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def jobs(sweep: Path) -> list[dict]:
    found = []
    for job in sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        summary = json.loads((job / "summary.json").read_text())
        found.append({"dir": job, "steps": summary["steps"], "seed": summary["seed"], "fork": summary.get("fork"),
                      "val_loss": summary["final"]["val_loss"]})
    return found


def interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student's t-interval (the sweep report's, lrtrain.sweep.study.estimate)."""
    from lrtrain.sweep.study import estimate

    e = estimate(values, confidence)
    return e.mean, (e.low if e.low is not None else math.nan), (e.high if e.high is not None else math.nan)


def ema_at(parent: Path, step: int) -> float:
    import csv

    with open(parent / "metrics.csv", newline="") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    return float(rows[step]["avg_val_loss"]) if step in rows else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="the mnist10k folder (with +experiment=mnist10k_fast); default: digits")
    parser.add_argument("--steps", type=int, default=1000, help="the constant parent's length")
    parser.add_argument("--at", default="20,40,60,80", help="fork points, percent of the parent's run")
    parser.add_argument("--cooldown", default="20%", help="fork.cooldown (a duration; %% of the steps before)")
    parser.add_argument("--shape", default="linear", choices=["linear", "cosine", "1-sqrt"])
    parser.add_argument("--full", default="cosine", choices=["cosine", "wsd"], help="the full runs' schedule")
    parser.add_argument("--seeds", default="0,1,2", help="the full runs' seeds (the parent uses the first)")
    parser.add_argument("--warmup", type=int, default=20, help="linear warmup steps (forks come after it)")
    parser.add_argument("--ema-decay", default="0.99")
    parser.add_argument("--out", type=Path, default=Path("bench_cooldown"))
    parser.add_argument("overrides", nargs="*", help="extra lrtrain overrides for every run")
    args = parser.parse_args()
    from lrtrain.durations import parse_duration

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=False)
    base = (["+experiment=mnist10k_fast", f"dataset.root={Path(args.root).resolve()}"] if args.root else [])
    base += ["warmup=linear", f"warmup.length={args.warmup}steps", *args.overrides]
    seeds = args.seeds.split(",")
    at = [round(float(p) / 100 * args.steps) for p in args.at.split(",")]
    if min(at) < args.warmup:
        parser.error(f"--at: the first fork ({min(at)} steps) comes before the end of the warmup ({args.warmup})")
    started = time.perf_counter()

    # The parent: validated at every fork's end (S + D), so its EMA there is a row of metrics.csv.
    cooldown = parse_duration(args.cooldown)
    if cooldown.unit == "ep":
        parser.error("--cooldown: a percentage or steps (500steps)")
    ends = [s + (round(cooldown.amount / 100 * s) if cooldown.unit == "%" else int(cooldown.amount)) for s in at]
    every = math.gcd(*ends)
    lrtrain(*base, "scheduler=constant", f"trainer.max_steps={max(args.steps, *ends)}", f"trainer.seed={seeds[0]}",
            f"trainer.save_at=[{','.join(f'{s}steps' for s in at)}]", f"trainer.val_every={every}steps",
            "averaging=ema", f"averaging.decay={args.ema_decay}", f"hydra.run.dir={out / 'parent'}", cwd=out)
    lrtrain("-m", f"fork.from={out / 'parent'}", f"fork.at={','.join(f'{s}steps' for s in at)}",
            f"fork.cooldown={args.cooldown}", f"fork.shape={args.shape}", f"hydra.sweep.dir={out / 'forks'}", cwd=out)
    full = (["scheduler=cosine", "scheduler.eta_min=0.0"] if args.full == "cosine" else
            ["scheduler=wsd", f"scheduler.decay_type={args.shape}"])
    lengths = ",".join(map(str, ends))
    if args.full == "wsd":  # one sweep per length: the decay fraction D / (S + D) differs between them
        for s, end in zip(at, ends):
            lrtrain("-m", *base, *full, f"scheduler.decay_fraction={(end - s) / end!r}", f"trainer.max_steps={end}",
                    f"trainer.seed={args.seeds}", f"hydra.sweep.dir={out / 'full' / str(end)}", cwd=out)
        full_jobs = [j for end in ends for j in jobs(out / "full" / str(end))]
    else:
        lrtrain("-m", *base, *full, f"trainer.max_steps={lengths}", f"trainer.seed={args.seeds}",
                f"hydra.sweep.dir={out / 'full'}", cwd=out)
        full_jobs = jobs(out / "full")
    wall = time.perf_counter() - started

    results = []
    print(f"{'S':>6} {'S+D':>6}  {'fork val_loss':>13}  {'full ' + args.full + ' (mean, 95% CI)':>34}  inside  "
          f"{'EMA at S+D':>10}")
    for fork in sorted(jobs(out / "forks"), key=lambda j: j["steps"]):
        s, end = fork["fork"]["step"], fork["steps"]
        mean, low, high = interval([j["val_loss"] for j in full_jobs if j["steps"] == end])
        inside = low <= fork["val_loss"] <= high if not math.isnan(low) else None
        ema = ema_at(out / "parent", end)
        results.append({"fork_step": s, "end": end, "fork_val_loss": fork["val_loss"], "full_mean": mean,
                        "full_ci": [low, high], "inside": inside, "parent_ema_val_loss": ema})
        print(f"{s:>6} {end:>6}  {fork['val_loss']:>13.4f}  {mean:>10.4f} [{low:.4f}, {high:.4f}]"
              f"{'':>4}  {inside!s:>6}  {ema:>10.4f}")
    parent_steps = max(args.steps, *ends)
    fork_cost = parent_steps + sum(e - s for s, e in zip(at, ends))
    full_cost = sum(ends)
    print(f"cost in optimizer steps: parent {parent_steps} + cooldowns {fork_cost - parent_steps} = {fork_cost}, "
          f"against {full_cost} for the full runs of one seed: ratio {fork_cost / full_cost:.2f}")
    print(f"wall {wall:.0f} s; the fork sweep's cooldown.png: {out / 'forks' / 'cooldown.png'}")
    (out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "forks": results, "cost_steps": fork_cost,
         "full_cost_steps_one_seed": full_cost, "ratio": fork_cost / full_cost, "wall_seconds": wall}, indent=2))


if __name__ == "__main__":
    main()
