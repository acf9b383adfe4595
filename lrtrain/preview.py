"""`lrtrain-schedule`: draw the LR curve of any config without training (a PNG and a terminal sparkline).

    lrtrain-schedule scheduler=cosine warmup=linear
    lrtrain-schedule -m scheduler=step,exponential,cosine_restarts optimizer=sgd optimizer.lr=0.1 \
        trainer.max_epochs=50

It composes the real config (the same overrides as `lrtrain`) and builds only the schedule and its timeline
through `build_schedule`, the code a run uses, so the curve is the one training would follow. It imports
neither torch nor the data: the steps per epoch come from `steps_per_epoch=N` or from the data set's size
(MNIST and Fashion-MNIST files on disk: the count in their header; digits and regression: known without
reading anything; anything else is loaded once to count it), batch size and validation fraction.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import struct
import sys
from pathlib import Path
from typing import Any, Optional

from lrtrain.writers import atomic_path

USAGE = """\
usage: lrtrain-schedule [-m] [group=option ...] [group.key=value ...] [steps_per_epoch=N] [out=FILE.png]
                        [log=true] [--csv FILE.csv]

Draw the learning rate of every optimizer step of a config, without training: a PNG (default
schedule.png) and one sparkline per curve in the terminal. Overrides are lrtrain's own.
  -m, --multirun     one curve per combination of comma-separated values, overlaid
  steps_per_epoch=N  optimizer steps per epoch (default: from the data set's size on disk, or known size)
  out=FILE.png       where to write the figure (out=none: the sparklines only)
  log=true           logarithmic LR axis
  --csv FILE.csv     also write every step's values: curve, step, epoch, lr (and momentum where a schedule
                     cycles it), one row per curve and step

example: lrtrain-schedule -m scheduler=step,exponential,cosine_restarts optimizer=sgd optimizer.lr=0.1 \\
             trainer.max_epochs=50"""

# Examples before the validation split is carved out, for data sets whose size is fixed (digits) or that
# torchvision downloads whole when their files are missing. Keep in step with lrtrain/data.py.
NOMINAL_SIZES = {"lrtrain.data.digits": 1797, "lrtrain.data.mnist": 60000, "lrtrain.data.fashion_mnist": 60000}
# Where torchvision keeps the IDX files of the MNIST family under dataset.root.
IDX_LABELS = {"lrtrain.data.mnist": "MNIST/raw/train-labels-idx1-ubyte",
              "lrtrain.data.fashion_mnist": "FashionMNIST/raw/train-labels-idx1-ubyte"}
IDX1_UBYTE = 0x00000801  # the magic number of a 1-D unsigned-byte IDX file (the labels)
SPARKS = "▁▂▃▄▅▆▇█"


def examples(data) -> Optional[int]:
    """Examples (training + validation) of the config's data set, without loading it: from an IDX file's header
    when its files are on disk (the real size, e.g. a subset of MNIST), from the config (regression), or the
    nominal size (digits; MNIST that a run would download). None when only loading it would tell."""
    target = data._target_
    if target in IDX_LABELS:
        path = Path(data.root).expanduser() / IDX_LABELS[target]
        if path.is_file():
            with open(path, "rb") as f:
                header = f.read(8)
            if len(header) == 8 and struct.unpack(">I", header[:4])[0] == IDX1_UBYTE:
                return struct.unpack(">I", header[4:])[0]
            return None  # not an IDX labels file: let the loader say what is wrong with it
    if target == "lrtrain.data.regression":
        return data.num_samples
    return NOMINAL_SIZES.get(target)


def steps_per_epoch(cfg) -> int:
    """Optimizer steps per epoch of the config's data set, as `build` will find them."""
    data = cfg.dataset
    n = examples(data)
    if n is None:
        from hydra.utils import instantiate

        return math.ceil(len(instantiate(data, _convert_="all").train) / data.batch_size)
    from lrtrain.config import validation_size

    n_train = n - validation_size(n, data.val_fraction)  # the split of lrtrain.data._split
    return math.ceil(n_train / data.batch_size)


def schedule_of(cfg, spe: Optional[int]) -> tuple[Any, int, int]:
    """The schedule the run `cfg` describes, its length in steps, and its steps per epoch."""
    from lrtrain.build_schedule import build_schedule
    from lrtrain.durations import Timeline

    spe = spe or steps_per_epoch(cfg)
    total = cfg.trainer.max_steps or cfg.trainer.max_epochs * spe
    return build_schedule(cfg, Timeline(spe, total)), total, spe


def curve(cfg, spe: Optional[int]) -> tuple[list[float], int]:
    """The LR of every optimizer step of the run `cfg` describes (first parameter group), and steps/epoch."""
    schedule, total, spe = schedule_of(cfg, spe)
    lr = cfg.optimizer.lr
    return [schedule(k, lr) for k in range(total)], spe


def write_csv(path: Path, rows: list[list[Any]], momentum: bool) -> None:
    """The per-step values, written to a temporary file and renamed: never a half-written CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["curve", "step", "epoch", "lr"] + (["momentum"] if momentum else []))
        # repr() of a float round-trips exactly, so values read back equal the schedule's
        out.writerows([[repr(v) if isinstance(v, float) else v for v in row] for row in rows])


def sparkline(values: list[float], top: float, width: int = 60) -> str:
    """`width` characters, each the mean LR of its share of the steps, scaled to [0, top]."""
    n = len(values)
    width = min(width, n)
    cells = []
    for i in range(width):
        chunk = values[i * n // width:(i + 1) * n // width] or [values[min(i * n // width, n - 1)]]
        level = sum(chunk) / len(chunk) / top if top > 0 else 0.0
        cells.append(SPARKS[min(len(SPARKS) - 1, max(0, round(level * (len(SPARKS) - 1))))])
    return "".join(cells)


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The runs a (multi)run of these overrides makes: the cross product of comma-separated sweeps."""
    if not multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(c) for c in itertools.product(*choices)]


def plot(curves: list[tuple[str, list[float]]], spe: int, path: Path, log: bool, title: str) -> None:
    from lrtrain.plots import figure

    fig = figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, values in curves:
        ax.plot([k / spe for k in range(len(values))], values, lw=1.6, label=label)
    ax.set(xlabel=f"epoch ({spe} optimizer steps each)", ylabel="learning rate", title=title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)


def run(argv: list[str]) -> int:
    from hydra import compose, initialize_config_dir

    from lrtrain.config import register, validate
    from lrtrain.errors import ConfigValueError
    from lrtrain.paths import config_dir

    multirun = any(a in ("-m", "--multirun") for a in argv)
    own = {"steps_per_epoch": None, "out": "schedule.png", "log": "false"}
    overrides = []
    csv_path: Optional[Path] = None
    args = iter(argv)
    for arg in args:
        if arg in ("-m", "--multirun"):
            continue
        if arg == "--csv" or arg.startswith("--csv="):
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            if not value or value.startswith("-"):
                raise ConfigValueError("--csv", value or None, "a file name (--csv steps.csv)")
            csv_path = Path(value).expanduser()
            continue
        key, _, value = arg.partition("=")
        if key in own:
            own[key] = value
        else:
            overrides.append(arg)
    spe = None
    if own["steps_per_epoch"] is not None:
        if not own["steps_per_epoch"].isdigit() or int(own["steps_per_epoch"]) < 1:
            raise ConfigValueError("steps_per_epoch", own["steps_per_epoch"], "a whole number >= 1")
        spe = int(own["steps_per_epoch"])
    if own["log"] not in ("true", "false"):
        raise ConfigValueError("log", own["log"], "true or false")

    runs = expand(overrides, multirun)
    swept = [i for i in range(len(runs[0])) if len({r[i] for r in runs}) > 1]
    curves: list[tuple[str, list[float]]] = []
    rows: list[list[Any]] = []  # for --csv
    cycled = False
    register()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for run_overrides in runs:
            cfg = compose(config_name="config", overrides=run_overrides)
            validate(cfg)
            schedule, total, spe_run = schedule_of(cfg, spe)
            values = [schedule(k, cfg.optimizer.lr) for k in range(total)]
            label = " ".join(run_overrides[i] for i in swept) or cfg.scheduler._target_.rsplit(".", 1)[-1]
            if cfg.scheduler._target_.endswith(".Plateau"):
                label += " (no metric: never reduced)"
            curves.append((label, values))
            momenta = [schedule.momentum(k) for k in range(total)]
            cycled = cycled or momenta[0] is not None
            rows += [[label, k, k // spe_run, v, m] for k, (v, m) in enumerate(zip(values, momenta))]
    top = max(max(v) for _, v in curves)
    width = max(len(label) for label, _ in curves)
    epochs = len(curves[0][1]) / spe_run
    print(f"learning rate over {len(curves[0][1])} steps ({epochs:g} epochs of {spe_run} steps); "
          f"bars scaled to {top:.3g}")
    for label, values in curves:
        print(f"{label:<{width}}  {sparkline(values, top)}  {values[0]:.3g} → {values[-1]:.3g} "
              f"(max {max(values):.3g})")
    if own["out"] != "none":
        path = Path(own["out"]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        fixed = " ".join(o for i, o in enumerate(runs[0]) if i not in swept)
        plot(curves, spe_run, path, own["log"] == "true", fixed or "learning-rate schedule")
        print(f"wrote {path}")
    if csv_path is not None:
        write_csv(csv_path, [row if cycled else row[:-1] for row in rows], cycled)
        print(f"wrote {csv_path}")
    return 0


def main() -> None:
    """Console entry point: one-line errors and exit code 2 for a bad config, like `lrtrain`."""
    from lrtrain.config import yaml_floats

    argv = yaml_floats(sys.argv[1:])
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    try:
        sys.exit(run(argv))
    except Exception as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        from lrtrain.errors import describe

        message, code = describe(e)
        print(f"lrtrain-schedule: error: {message}", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
