"""The bad inputs found so far (about sixty), each run as a real `lrtrain`, `lrtrain-schedule` or `lrtrain-report` process: every one must
end in exactly one line on stderr, `<tool>: error: ...`, and no traceback.

    uv run python scripts/bad_inputs.py [--jobs 2] [--only SUBSTRING]

The families: config values, durations, non-finite floats, options, data files (written into a temporary
folder in the real formats, by tests/datafiles.py), checkpoints and report inputs. Prints a table (input,
exit code, message, PASS/FAIL) and exits 1 if any input fails the rule.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the writers of real-format data files

from datafiles import write_cifar10, write_image_folder, write_idx, write_mnist  # noqa: E402

BIN = Path(sys.executable).parent
# Small and quiet; the bad input is what fails, before or during a short run.
QUIET = ["trainer.max_epochs=1", "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]


@dataclass
class Case:
    family: str
    name: str
    args: list[str]
    tool: str = "lrtrain"
    setup: Optional[Callable[[Path], None]] = None  # writes files into the case's folder (its cwd)
    code: Optional[int] = None  # the exit code expected, when it matters


class _Code:
    """A pickle that runs a command when loaded: the file it touches must never appear."""

    def __reduce__(self):
        return (os.system, ("touch PAYLOAD-RAN",))


def _cifar(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        write_cifar10(tmp / "data")
        change(tmp / "data" / "cifar-10-batches-py")
    return setup


def _mnist(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        write_mnist(tmp / "data")
        change(tmp / "data" / "MNIST" / "raw")
    return setup


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _checkpoint(content: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        content(tmp / "ckpt.pt")
    return setup


def _torch_save(obj) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import torch

        torch.save(obj, path)
    return write


def _sweep(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """A two-job sweep folder as lrtrain and Hydra leave it (what the report reads), then one file spoiled."""
    def setup(tmp: Path) -> None:
        import yaml

        for job, lr in enumerate((0.01, 0.02)):
            d = tmp / "sweep" / str(job)
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}"]))
            (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimizer": {"lr": lr}}))
            (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {}}}}))
            (d / "summary.json").write_text(json.dumps({
                "status": "completed", "run_dir": str(d), "best_value": 0.5 + lr, "best_epoch": 0,
                "monitor": "val_loss", "mode": "min", "epochs": 1, "steps": 10, "train_seconds": 1.0}))
        change(tmp / "sweep")
    return setup


CIFAR = ["dataset=cifar10", "dataset.root=data", "dataset.download=false"]
MNIST = ["dataset=mnist", "dataset.root=data", "dataset.download=false"]

CASES = [
    # config values
    Case("config", "unknown option", ["optimizer=adamm"], code=2),
    Case("config", "negative lr", ["optimizer.lr=-1"], code=2),
    Case("config", "unknown key", ["optimizer.lrr=1"], code=2),
    Case("config", "zero batch size", ["dataset.batch_size=0"], code=2),
    Case("config", "no such device", ["trainer.device=tpu"], code=2),
    Case("config", "betas out of range", ["optimizer.betas=[0.9,1.5]"], code=2),
    Case("config", "monitor not logged", ["trainer.monitor=val_f1"], code=2),
    Case("config", "val_fraction leaves nothing", ["dataset.val_fraction=0.9999"], code=2),
    Case("config", "seed beyond torch", ["trainer.seed=100000000000000000000000"], code=2),
    Case("config", "huge model", ["model.hidden=[100000000000]"], code=2),
    Case("config", "vit 10^8 blocks deep", ["model=vit", "model.depth=100000000"], code=2),
    Case("config", "huge data set", ["dataset=regression", "dataset.num_samples=100000000000000", "model=linear"],
         code=2),
    Case("config", "blocklisted _target_", ["model._target_=os.system"], code=2),
    Case("config", "unknown option in a list", ["regularization=[l2,foo]"], code=2),
    Case("config", "custom scheduler without class", ["scheduler=custom"], code=2),
    Case("config", "malformed YAML on the search path", ["hydra.searchpath=[file://conf]", "optimizer=mine"],
         setup=lambda tmp: ((tmp / "conf" / "optimizer").mkdir(parents=True),
                            (tmp / "conf" / "optimizer" / "mine.yaml").write_text("lr: [0.1\nbetas: :\n")), code=2),
    Case("config", "zero epochs", ["trainer.max_epochs=0"], code=2),
    # durations
    Case("durations", "T_0=0 (used to hang)", ["scheduler=cosine_restarts", "scheduler.T_0=0"], code=2),
    Case("durations", "T_0 rounds to 0", ["scheduler=cosine_restarts", "scheduler.T_0=0.001ep"], code=2),
    Case("durations", "step_size=0steps", ["scheduler=step", "scheduler.step_size=0steps"], code=2),
    Case("durations", "T_max=0.01%", ["scheduler=cosine", "scheduler.T_max=0.01%"], code=2),
    Case("durations", "step_size_up=0", ["scheduler=cyclic", "scheduler.step_size_up=0"], code=2),
    Case("durations", "warmup rounds to 0", ["warmup=linear", "warmup.length=0.001ep"], code=2),
    Case("durations", "not a duration", ["scheduler=step", "scheduler.step_size=soon"], code=2),
    Case("durations", "schedule T_0=0", ["scheduler=cosine_restarts", "scheduler.T_0=0", "out=none"],
         tool="lrtrain-schedule", code=2),
    Case("durations", "schedule period=0steps", ["scheduler=exponential", "scheduler.period=0steps", "out=none"],
         tool="lrtrain-schedule", code=2),
    # non-finite floats
    Case("non-finite", "eps=inf", ["optimizer.eps=inf"], code=2),
    Case("non-finite", "divergence_threshold=nan", ["early_stopping.divergence_threshold=nan"], code=2),
    Case("non-finite", "gamma=inf", ["scheduler=step", "scheduler.gamma=inf"], code=2),
    Case("non-finite", "betas with nan", ["optimizer.betas=[0.9,nan]"], code=2),
    Case("non-finite", "weight_decay=-inf", ["regularization=[l2]", "regularization.l2.weight_decay=-inf"], code=2),
    Case("non-finite", "eps=.inf (YAML's spelling)", ["optimizer.eps=.inf"], code=2),
    Case("non-finite", "betas with .nan", ["optimizer.betas=[0.9,.nan]"], code=2),
    Case("non-finite", "schedule lr=.nan", ["optimizer.lr=.nan", "out=none"], tool="lrtrain-schedule", code=2),
    Case("non-finite", "schedule lr=nan", ["optimizer.lr=nan", "out=none"], tool="lrtrain-schedule", code=2),
    # options
    Case("options", "warmup.length without warmup", ["warmup.length=5ep"], code=2),
    Case("options", "gamma with constant", ["scheduler.gamma=0.5"], code=2),
    Case("options", "l2 key without l2", ["regularization.l2.weight_decay=0.1"], code=2),
    Case("options", "mlflow key without mlflow", ["logger.mlflow.tracking_uri=sqlite:///x.db"], code=2),
    Case("options", "unknown logger key", ["logger.tensorboard.foo=1"], code=2),
    # data files
    Case("data", "CIFAR batch with code", CIFAR,
         setup=_cifar(lambda d: (d / "data_batch_1").write_bytes(pickle.dumps({"data": _Code()}, protocol=2))),
         code=2),
    Case("data", "CIFAR batch truncated", CIFAR, setup=_cifar(lambda d: _truncate(d / "data_batch_2")), code=2),
    Case("data", "CIFAR meta not a pickle", CIFAR,
         setup=_cifar(lambda d: (d / "batches.meta").write_bytes(b"\x89PNG")), code=2),
    Case("data", "MNIST more labels than images", MNIST,
         setup=_mnist(lambda d: write_idx(d / "train-labels-idx1-ubyte", __import__("numpy").zeros(61))), code=2),
    Case("data", "MNIST wrong magic", MNIST,
         setup=_mnist(lambda d: write_idx(d / "train-images-idx3-ubyte", __import__("numpy").zeros(60))), code=2),
    Case("data", "MNIST truncated", MNIST, setup=_mnist(lambda d: _truncate(d / "t10k-images-idx3-ubyte")), code=2),
    Case("data", "MNIST label 10", MNIST,
         setup=_mnist(lambda d: write_idx(d / "t10k-labels-idx1-ubyte", __import__("numpy").full(20, 10))), code=2),
    Case("data", "corrupt PNG in a worker",
         ["dataset=folder", "dataset.root=images", "dataset.image_size=8", "dataset.num_workers=1", "model=cnn",
          "model.channels=[4]", "model.hidden=8"],
         setup=lambda tmp: (write_image_folder(tmp / "images"), _truncate(tmp / "images" / "cat" / "3.png")),
         code=2),
    Case("data", "CIFAR files missing", ["dataset=cifar10", "dataset.root=absent", "dataset.download=false"], code=1),
    # checkpoints
    Case("checkpoints", "another layout", ["trainer.resume=ckpt.pt"],
         setup=_checkpoint(_torch_save({"model": {}, "step": 3, "optimizer": {}})), code=2),
    Case("checkpoints", "position lacks a key", ["trainer.resume=ckpt.pt"],
         setup=_checkpoint(_torch_save({"model": {}, "optimizer": {}, "schedule": {}, "early_stopping": {}, "step": 1,
                                        "epoch": 0, "position": {"step": 1, "epoch": 0},
                                        "rng": {"python": 0, "numpy": 0, "torch": 0}, "config": {}})), code=2),
    Case("checkpoints", "a folder named like a temporary", ["trainer.resume=auto"],
         setup=lambda tmp: (tmp / "run" / "checkpoints" / ".last.pt.1.tmp").mkdir(parents=True), code=2),
    Case("checkpoints", "code payload", ["trainer.resume=ckpt.pt"],
         setup=_checkpoint(_torch_save({"model": _Code(), "step": 1})), code=2),
    Case("checkpoints", "garbage", ["trainer.resume=ckpt.pt"],
         setup=_checkpoint(lambda p: p.write_bytes(os.urandom(4096))), code=2),
    Case("checkpoints", "no checkpoint there", ["trainer.resume=nowhere"], code=2),
    # report inputs
    Case("report", "summary.json a list", ["sweep", "--no-plots"], tool="lrtrain-report",
         setup=_sweep(lambda s: (s / "0" / "summary.json").write_text("[1, 2]")), code=2),
    Case("report", "summary.json nested 100,000 deep", ["sweep", "--no-plots"], tool="lrtrain-report",
         setup=_sweep(lambda s: (s / "0" / "summary.json").write_text("[" * 100_000 + "]" * 100_000)), code=2),
    Case("report", "overrides.yaml a number", ["sweep", "--no-plots"], tool="lrtrain-report",
         setup=_sweep(lambda s: (s / "1" / ".hydra" / "overrides.yaml").write_text("5")), code=2),
]


@dataclass
class Outcome:
    case: Case
    returncode: int
    stderr: str
    passed: bool = field(init=False)
    why: str = field(init=False)

    def __post_init__(self) -> None:
        lines = self.stderr.strip().splitlines()
        prefix = f"{self.case.tool}: error: "
        checks = [
            (self.returncode != 0, "exit code 0"),
            (self.case.code is None or self.returncode == self.case.code, f"expected exit {self.case.code}"),
            (len(lines) == 1, f"{len(lines)} lines on stderr"),
            (bool(lines) and lines[0].startswith(prefix), f"not '{prefix}...'"),
            ("Traceback" not in self.stderr, "a traceback"),
        ]
        failed = [why for ok, why in checks if not ok]
        self.passed, self.why = not failed, "; ".join(failed)


def run(case: Case, root: Path) -> Outcome:
    tmp = Path(tempfile.mkdtemp(dir=root))
    if case.setup:
        case.setup(tmp)
    args = list(case.args)
    if case.tool == "lrtrain":  # the case's own overrides come last, so they win
        args = [*QUIET, *args, f"hydra.run.dir={tmp / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    try:
        proc = subprocess.run([str(BIN / case.tool), *args], cwd=tmp, capture_output=True, text=True, timeout=180,
                              env=env)
        outcome = Outcome(case, proc.returncode, proc.stderr)
    except subprocess.TimeoutExpired:
        outcome = Outcome(case, -1, "timed out after 180 s (a hang?)\nTraceback: none")
    if (tmp / "PAYLOAD-RAN").exists():  # a payload that ran fails the case whatever it printed
        outcome.passed, outcome.why = False, "THE PAYLOAD RAN"
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="processes at once (default 2)")
    parser.add_argument("--only", help="run only the cases whose family or name contains this")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or args.only in c.family or args.only in c.name]

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory(prefix="lrtrain-bad-inputs-") as root:
        with ThreadPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(lambda c: run(c, Path(root)), cases))
    table = Table(title=f"{len(cases)} bad inputs", show_lines=False)
    for column in ("family", "input", "exit", "message", "result"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        message = o.stderr.strip().splitlines()[-1] if o.stderr.strip() else ""
        table.add_row(o.case.family, f"{o.case.tool} {' '.join(o.case.args)}" if o.case.tool != "lrtrain"
                      else f"{o.case.name}: {' '.join(o.case.args)}", str(o.returncode), message,
                      "PASS" if o.passed else f"FAIL ({o.why})")
    Console(width=200).print(table)
    passed = sum(o.passed for o in outcomes)
    print(f"{passed}/{len(outcomes)} passed")
    sys.exit(0 if passed == len(outcomes) else 1)


if __name__ == "__main__":
    main()
