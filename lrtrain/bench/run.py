"""Running a plan and reading it back: one Hydra multirun of lrtrain per (submission, workload), then time to
target per trial from its metrics.csv, per study, per workload, and the outputs (`report`, rebuilt from disk).

External tuning (AlgoPerf): Optuna's QMC sampler (lrtrain's sweeper, `hydra/sweeper/sampler=qmc`) draws
trials x studies points of the submission's space in one sweep, and a seeded shuffle deals them to the studies, as
AlgoPerf draws its 15 points and assigns them to 3 studies at random. A study's time is its fastest trial that
reached the target; the workload's time is the median over studies (inf when most missed). Self-tuning: the
submission's one configuration, one run per study (trainer.seed = seed + study), budget x self_tuning_budget.
"""

from __future__ import annotations

import csv
import math
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from lrtrain.bench.scoring import BenchInputError, Times
from lrtrain.bench.suite import Plan, Submission, Target, Workload

PLAN_FILE = "bench.yaml"  # the plan as run: what `lrtrain-bench report` rebuilds the outputs from


def launch_args(plan: Plan, sub: Submission, workload: Workload, sweep_dir: Path) -> list[str]:
    """The lrtrain multirun of one submission on one workload."""
    common = [*plan.run_overrides, *workload.overrides, *sub.overrides, *workload.target.overrides(),
              f"trainer.max_steps={plan.steps(workload)}"]
    if plan.ruleset == "external":
        n = plan.trials * plan.studies
        direction = "minimize" if workload.target.mode == "min" else "maximize"
        runs = [*common, f"trainer.seed={plan.seed}", "hydra/sweeper=optuna", "hydra/sweeper/sampler=qmc",
                "hydra/sweeper/pruner=none", f"hydra.sweeper.sampler.seed={plan.seed}", f"hydra.sweeper.n_trials={n}",
                f"hydra.sweeper.n_jobs={n}", f"hydra.sweeper.direction={direction}",
                *(f"{key}={space}" for key, space in sub.space.items())]
    else:
        seeds = ",".join(str(plan.seed + study) for study in range(plan.studies))
        runs = [*common, *(f"{key}={value}" for key, value in sub.default.items()), f"trainer.seed={seeds}"]
    return ["-m", *runs, *plan.extra, f"hydra.sweep.dir={sweep_dir}"]


def studies(plan: Plan) -> list[list[int]]:
    """The job numbers (sweep subdirs) of each study."""
    if plan.ruleset == "self":
        return [[study] for study in range(plan.studies)]
    jobs = list(range(plan.trials * plan.studies))
    random.Random(plan.seed).shuffle(jobs)
    return [sorted(jobs[s * plan.trials:(s + 1) * plan.trials]) for s in range(plan.studies)]


def run(plan: Plan, out: Path) -> None:
    """Every submission on every workload, one lrtrain process each, then the report."""
    from omegaconf import OmegaConf

    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(plan.to_dict()), out / PLAN_FILE)
    pairs = [(s, w) for s in plan.submissions for w in plan.workloads]
    start = time.monotonic()
    for i, (sub, workload) in enumerate(pairs, 1):
        sweep_dir = out / sub.name / workload.name
        # the log beside the sweep dir, not in it: the sweep claims its dir, which holds only a sweep's files
        log_path = out / sub.name / f"{workload.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "lrtrain", *launch_args(plan, sub, workload, sweep_dir)]
        began = time.monotonic()
        with open(log_path, "w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                code = proc.wait()
            except BaseException:  # Ctrl-C, SIGTERM: the sweep stops too (lrtrain checkpoints on SIGTERM)
                proc.terminate()
                proc.wait()
                raise
        note = "" if code == 0 else f", exit {code}: {_last_line(log_path)}"
        print(f"[{i}/{len(pairs)}] {sub.name} on {workload.name}: {time.monotonic() - began:.1f} s{note}", flush=True)
        if code == 2:  # a config error is the same for every study: say it instead of scoring nothing
            raise BenchInputError(f"{sub.name} on {workload.name}: {_last_line(log_path)} "
                                  f"(the command is in {log_path})")
    print(f"ran {len(pairs)} sweeps in {time.monotonic() - start:.0f} s")
    report(out)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def default_out() -> Path:
    return Path("outputs") / "bench" / datetime.now().strftime("%Y-%m-%d") / datetime.now().strftime("%H-%M-%S")


# ------------------------------------------------------------------------------------------- time to target


@dataclass(frozen=True)
class TrialTime:
    """When a run first validated at or past its target: optimizer steps and training seconds (inf: never)."""

    steps: float
    seconds: float
    best: Optional[float]  # the best value of the target's metric it reached (None: no validation)

    def of(self, unit: str) -> float:
        return self.steps if unit == "steps" else self.seconds


def time_to_target(run_dir: Path, target: Target) -> TrialTime:
    """Read from the run's metrics.csv: the first validation at or past the target. A run that wrote none (failed
    before its first epoch ended) never reached it."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return TrialTime(math.inf, math.inf, None)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and target.metric not in rows[0]:
        raise BenchInputError(f"{path}: no column {target.metric!r} (the target's metric); it has "
                              f"{', '.join(rows[0])}")
    elapsed, best = 0.0, None
    for row in rows:
        elapsed += float(row["seconds"])
        value = float(row[target.metric])
        if not math.isnan(value) and (best is None or (value < best) == (target.mode == "min")):
            best = value
        if target.reached(value):
            return TrialTime(int(row["step"]), elapsed, best)
    return TrialTime(math.inf, math.inf, best)


@dataclass
class Result:
    """One submission on one workload: every trial's time, each study's (its fastest trial), their median, and
    each study's best value of the target's metric (its best trial's)."""

    trials: dict[int, TrialTime]
    per_study: list[float]
    best_per_study: list[Optional[float]]

    @property
    def time(self) -> float:
        return statistics.median(self.per_study)


def collect(plan: Plan, out: Path) -> dict[tuple[str, str], Result]:
    results = {}
    for sub in plan.submissions:
        for workload in plan.workloads:
            sweep_dir = out / sub.name / workload.name
            trials = {job: time_to_target(sweep_dir / str(job), workload.target)
                      for study in studies(plan) for job in study}
            per_study = [min(trials[job].of(plan.time) for job in study) for study in studies(plan)]
            pick = min if workload.target.mode == "min" else max
            best = [pick((b for job in study if (b := trials[job].best) is not None), default=None)
                    for study in studies(plan)]
            results[sub.name, workload.name] = Result(trials, per_study, best)
    return results


# ----------------------------------------------------------------------------------------------- outputs


def differences(plan: Plan, results: dict[tuple[str, str], Result]) -> list[dict[str, Any]]:
    """For each workload, each submission against the fastest: the difference of their per-study times with a
    Welch t-interval (lrtrain/sweep/study.py), or, where either median time is inf, of their per-study best values of
    the target's metric (how close each came). `noise`: the interval holds 0, or there are too few studies with
    a value to tell."""
    from lrtrain.sweep.study import difference

    rows = []
    for workload in plan.workloads:
        metric = workload.target.metric
        sign = 1 if workload.target.mode == "min" else -1
        ranked = sorted(plan.submissions, key=lambda s: (results[s.name, workload.name].time,
                                                         sign * _mean(results[s.name, workload.name].best_per_study)))
        best = results[ranked[0].name, workload.name]
        for sub in ranked[1:]:
            mine = results[sub.name, workload.name]
            timed = math.isfinite(best.time) and math.isfinite(mine.time)
            if timed:
                d = difference(mine.per_study, best.per_study, plan.confidence)
            else:
                d = difference(mine.best_per_study, best.best_per_study, plan.confidence)
            noise = d is None or d.low is None or d.low <= 0 <= d.high
            rows.append({"workload": workload.name, "submission": sub.name, "best": ranked[0].name,
                         "of": plan.time if timed else metric, "difference": None if d is None else d.mean,
                         "low": None if d is None else d.low, "high": None if d is None else d.high,
                         "noise": noise, "timed": timed})
    return rows


def _mean(values: list[Optional[float]]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.inf


def report(out: Path) -> None:
    """bench_trials.csv, bench_times.csv, bench_scores.csv, performance_profile.png and the tables, from the run
    dirs under `out` and its bench.yaml."""
    from omegaconf import OmegaConf
    from rich.console import Console

    from lrtrain.bench.report import plot_profiles, table
    from lrtrain.bench.scoring import scores, write_scores

    path = out / PLAN_FILE
    if not path.is_file():
        raise BenchInputError(f"{out}: not a benchmark's output dir (no {PLAN_FILE}; `lrtrain-bench run` writes one)")
    try:
        plan = Plan.from_dict(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    except (TypeError, KeyError) as e:  # another version's plan (e.g. an older one with skipped workloads)
        raise BenchInputError(f"{path}: not a plan this lrtrain-bench reads ({e}); run the benchmark again") from None
    results = collect(plan, out)
    names = [w.name for w in plan.workloads]
    times = Times(names, {s.name: [results[s.name, w].time for w in names] for s in plan.submissions})
    _write_trials(plan, results, out / "bench_trials.csv")
    _write_times(times, out / "bench_times.csv")
    by_name = scores(times)
    write_scores(out / "bench_scores.csv", times, by_name)
    plot_profiles(times, out / "performance_profile.png")
    diffs = differences(plan, results)
    noise = {(d["submission"], d["workload"]): d["noise"] for d in diffs if d["timed"]}
    console = Console()
    title = (f"suite {plan.suite}, ruleset {plan.ruleset} ({plan.studies} studies"
             f"{f' x {plan.trials} trials' if plan.ruleset == 'external' else ''}), time to target in {plan.time}")
    console.print(table(times, by_name, plan.time, title, noise))
    for d in diffs:
        if d["difference"] is not None and d["low"] is not None:
            console.print(f"{d['workload']}: {d['submission']} - {d['best']} = {d['difference']:+.4g} {d['of']} "
                          f"[{d['low']:+.4g}, {d['high']:+.4g}] ({plan.confidence:.0%})"
                          f"{', within noise' if d['noise'] else ''}")
    console.print(f"outputs: {out}")


def _write_times(times: Times, path: Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["submission", *times.workloads])
        for name, row in times.rows.items():
            out.writerow([name, *(f"{t:.6g}" for t in row)])


def _write_trials(plan: Plan, results: dict[tuple[str, str], Result], path: Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["submission", "workload", "study", "job", "steps_to_target", "seconds_to_target",
                      "best_value", "target"])
        for (sub, workload), result in results.items():
            target = next(w.target for w in plan.workloads if w.name == workload)
            for study, jobs in enumerate(studies(plan)):
                for job in jobs:
                    t = result.trials[job]
                    out.writerow([sub, workload, study, job, f"{t.steps:.6g}", f"{t.seconds:.6g}",
                                  "" if t.best is None else f"{t.best:.6g}",
                                  f"{target.metric} {'<=' if target.mode == 'min' else '>='} {target.value:g}"])
