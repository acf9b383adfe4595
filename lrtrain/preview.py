"""`lrtrain-schedule`: draw the LR curve of any config without training (a PNG and a terminal sparkline).

    lrtrain-schedule scheduler=cosine warmup=linear
    lrtrain-schedule -m scheduler=step,exponential,cosine_restarts optimizer=sgd optimizer.lr=0.1 \
        trainer.max_epochs=50

It composes the real config (the same overrides as `lrtrain`) and builds only the schedule and its timeline
through `build_schedule`, the code a run uses, so the curve is the one training would follow. It imports
neither torch nor the data: the steps per epoch come from `steps_per_epoch=N` or from the data set's known
size, batch size and validation fraction (an unknown data set is loaded once to count it).
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Optional

USAGE = """\
usage: lrtrain-schedule [-m] [group=option ...] [group.key=value ...] [steps_per_epoch=N] [out=FILE.png]
                        [log=true]

Draw the learning rate of every optimizer step of a config, without training: a PNG (default
schedule.png) and one sparkline per curve in the terminal. Overrides are lrtrain's own.
  -m, --multirun     one curve per combination of comma-separated values, overlaid
  steps_per_epoch=N  optimizer steps per epoch (default: from the data set config)
  out=FILE.png       where to write the figure (out=none: the sparklines only)
  log=true           logarithmic LR axis

example: lrtrain-schedule -m scheduler=step,exponential,cosine_restarts optimizer=sgd optimizer.lr=0.1 \\
             trainer.max_epochs=50"""

# Examples in the training split before the validation split is carved out, for data sets whose size is
# fixed, so that a preview does not load (or download) them. Keep in step with lrtrain/data.py.
KNOWN_SIZES = {"lrtrain.data.digits": 1797, "lrtrain.data.mnist": 60000}
SPARKS = "▁▂▃▄▅▆▇█"


def steps_per_epoch(cfg) -> int:
    """Optimizer steps per epoch of the config's data set, as `build` will find them."""
    data = cfg.dataset
    n = KNOWN_SIZES.get(data._target_)
    if n is None:
        from hydra.utils import instantiate

        return math.ceil(len(instantiate(data, _convert_="all").train) / data.batch_size)
    n_train = n - max(1, round(n * data.val_fraction))  # the split of lrtrain.data._split
    return math.ceil(n_train / data.batch_size)


def curve(cfg, spe: Optional[int]) -> tuple[list[float], int]:
    """The LR of every optimizer step of the run `cfg` describes (first parameter group), and steps/epoch."""
    from lrtrain.build_schedule import build_schedule
    from lrtrain.durations import Timeline

    spe = spe or steps_per_epoch(cfg)
    total = cfg.trainer.max_steps or cfg.trainer.max_epochs * spe
    schedule = build_schedule(cfg, Timeline(spe, total))
    lr = cfg.optimizer.lr
    return [schedule(k, lr) for k in range(total)], spe


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
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    for label, values in curves:
        ax.plot([k / spe for k in range(len(values))], values, lw=1.6, label=label)
    ax.set(xlabel=f"epoch ({spe} optimizer steps each)", ylabel="learning rate", title=title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv: list[str]) -> int:
    from hydra import compose, initialize_config_dir

    from lrtrain.config import register, validate
    from lrtrain.errors import ConfigValueError
    from lrtrain.paths import config_dir

    multirun = any(a in ("-m", "--multirun") for a in argv)
    own = {"steps_per_epoch": None, "out": "schedule.png", "log": "false"}
    overrides = []
    for arg in argv:
        if arg in ("-m", "--multirun"):
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
    register()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for run_overrides in runs:
            cfg = compose(config_name="config", overrides=run_overrides)
            validate(cfg)
            values, spe_run = curve(cfg, spe)
            label = " ".join(run_overrides[i] for i in swept) or cfg.scheduler._target_.rsplit(".", 1)[-1]
            if cfg.scheduler._target_.endswith(".Plateau"):
                label += " (no metric: never reduced)"
            curves.append((label, values))
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
    return 0


def main() -> None:
    """Console entry point: one-line errors and exit code 2 for a bad config, like `lrtrain`."""
    import os

    argv = sys.argv[1:]
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
