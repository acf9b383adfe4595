"""A benchmark's plan, from configs/bench.yaml and configs/bench/{suite,submission}/<name>.yaml: the workloads
(data set and model, length, validation target), the submissions (lrtrain overrides, a search space for external
tuning, one configuration for self-tuning) and the ruleset."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from lrtrain.bench.scoring import BenchInputError

BENCH_KEYS = ("suite", "submissions", "ruleset", "trials", "studies", "self_tuning_budget", "seed", "time",
              "confidence", "out", "run_overrides")


class BenchConfigError(BenchInputError):
    """A bench key, suite or submission that is not valid: one line naming it and what would be."""


@dataclass(frozen=True)
class Target:
    metric: str
    mode: str  # min | max
    value: float

    def reached(self, value: float) -> bool:
        return value <= self.value if self.mode == "min" else value >= self.value

    def overrides(self) -> list[str]:
        """Runs stop at the target, and a search sorts trials by the target's metric."""
        return ["early_stopping=target", f"early_stopping.monitor={self.metric}", f"early_stopping.mode={self.mode}",
                f"early_stopping.stopping_threshold={self.value}", f"trainer.monitor={self.metric}",
                f"trainer.monitor_mode={self.mode}"]


@dataclass(frozen=True)
class Workload:
    name: str
    overrides: list[str]
    steps: int
    target: Target


@dataclass(frozen=True)
class Submission:
    name: str
    overrides: list[str]
    space: dict[str, str]
    default: dict[str, Any]


@dataclass
class Plan:
    suite: str
    workloads: list[Workload]
    submissions: list[Submission]
    ruleset: str
    trials: int
    studies: int
    self_tuning_budget: float
    seed: int
    time: str
    confidence: float
    run_overrides: list[str]
    extra: list[str]  # the command line's other overrides, for every run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Plan":
        d = dict(d)
        d["workloads"] = [Workload(**{**w, "target": Target(**w["target"])}) for w in d["workloads"]]
        d["submissions"] = [Submission(**s) for s in d["submissions"]]
        return Plan(**d)

    def steps(self, workload: Workload) -> int:
        """The run length: the workload's, or self_tuning_budget times it under the self-tuning ruleset."""
        return workload.steps if self.ruleset == "external" else math.ceil(workload.steps * self.self_tuning_budget)


def _options(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _check(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise BenchConfigError(f"{key}={value!r}: must be {valid}")


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the bench's own overrides, those handed to every lrtrain run)."""
    mine = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0].lstrip("+~") in BENCH_KEYS]
    return mine, [o for o in overrides if o not in mine]


def load_plan(overrides: list[str], config_dir: Optional[Path] = None) -> tuple[Plan, Optional[str]]:
    """The plan for `lrtrain-bench run <overrides>`, and the output dir asked for (None: a dated one)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from lrtrain.paths import config_dir as default_config_dir

    config_dir = Path(config_dir or default_config_dir())
    mine, extra = split_overrides(overrides)
    for o in mine:
        if o.startswith("suite="):
            suites = _options(config_dir, "bench/suite")
            _check(o[6:] in suites, "suite", o[6:], "one of " + ", ".join(suites))
    # The suites live in configs/bench/ (lrtrain's own groups are the other folders of configs/), chosen by
    # bench.yaml's `bench/suite@suite`: Hydra's name for that choice, which `suite=` stands for.
    hydra_overrides = ["bench/suite@suite=" + o[6:] if o.startswith("suite=") else o for o in mine]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name="bench", overrides=hydra_overrides)
        bench = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise BenchConfigError(f"{' '.join(mine)}: {first}") from None
    _check(bench["ruleset"] in ("external", "self"), "ruleset", bench["ruleset"], "external or self")
    for key in ("trials", "studies"):
        _check(isinstance(bench[key], int) and bench[key] >= 1, key, bench[key], "an integer >= 1")
    _check(isinstance(bench["seed"], int), "seed", bench["seed"], "an integer")
    _check(bench["time"] in ("steps", "seconds"), "time", bench["time"], "steps or seconds")
    _check(isinstance(bench["self_tuning_budget"], (int, float)) and bench["self_tuning_budget"] >= 1,
           "self_tuning_budget", bench["self_tuning_budget"], "a number >= 1")
    _check(isinstance(bench["confidence"], float) and 0 < bench["confidence"] < 1, "confidence",
           bench["confidence"], "in (0, 1), e.g. 0.95")
    workloads = _workloads(bench["suite"])
    names = bench["submissions"]
    valid = _options(config_dir, "bench/submission")
    _check(isinstance(names, list) and names and len(set(names)) == len(names), "submissions", names,
           "a list of distinct names, e.g. submissions=[adamw_cosine,schedulefree_adamw]")
    for name in names:
        _check(name in valid, "submissions", name, "one of " + ", ".join(valid))
    submissions = [_submission(name, OmegaConf.to_container(OmegaConf.load(config_dir / "bench" / "submission" /
                                                                            f"{name}.yaml"), resolve=True),
                               bench["ruleset"]) for name in names]
    plan = Plan(bench["suite"]["name"], workloads, submissions, bench["ruleset"], bench["trials"],
                bench["studies"], float(bench["self_tuning_budget"]), bench["seed"], bench["time"],
                bench["confidence"], list(bench["run_overrides"]), extra)
    return plan, bench["out"]


def _workloads(suite: dict[str, Any]) -> list[Workload]:
    workloads = []
    for name, w in suite["workloads"].items():
        where = f"suite.workloads.{name}"
        target = w.get("target") or {}
        _check(set(target) == {"metric", "mode", "value"}, f"{where}.target", target,
               "{metric: <a validation metric>, mode: min|max, value: <number>}")
        _check(target["mode"] in ("min", "max"), f"{where}.target.mode", target["mode"], "min or max")
        _check(isinstance(target["value"], (int, float)), f"{where}.target.value", target["value"], "a number")
        _check(isinstance(w.get("overrides"), list), f"{where}.overrides", w.get("overrides"),
               "a list of lrtrain overrides (data set and model)")
        _check(isinstance(w.get("steps"), int) and w["steps"] >= 1, f"{where}.steps", w.get("steps"),
               "an integer >= 1 (optimizer steps)")
        workloads.append(Workload(name, list(w["overrides"]), w["steps"], Target(target["metric"], target["mode"],
                                                                                   float(target["value"]))))
    _check(bool(workloads), "suite.workloads", suite["workloads"],
           "at least one workload: {<name>: {overrides: [...], steps: <n>, target: {...}}}")
    return workloads


def _submission(name: str, node: dict[str, Any], ruleset: str) -> Submission:
    where = f"configs/bench/submission/{name}.yaml"
    _check(isinstance(node.get("overrides"), list), f"{where}: overrides", node.get("overrides"),
           "a list of lrtrain overrides")
    space, default = node.get("space") or {}, node.get("default") or {}
    if ruleset == "external":
        _check(bool(space), f"{where}: space", space, "a search space for ruleset=external, e.g. "
                                                      "{optimizer.lr: tag(log, interval(1e-4, 1e-1))}")
    return Submission(name, [str(o) for o in node["overrides"]], {k: str(v) for k, v in space.items()}, default)
