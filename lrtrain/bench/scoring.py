"""AlgoPerf's score of a table of times to target (Dahl et al. 2023; the rules in mlcommons/algorithmic-efficiency,
docs/DOCUMENTATION.md, "Scoring"). Pure Python: `lrtrain-bench score` imports neither torch nor numpy.

For submission s and workload w with time t[s][w] (inf: the target was not reached):
  ratio     r[s][w] = t[s][w] / min over submissions of t[.][w]   (inf when nobody reached the target)
  profile   rho_s(tau) = (1/n) |{w : r[s][w] <= tau}|               (n: every workload of the table)
  score     B_s = 1/(r_max - 1) * integral from 1 to r_max of rho_s(tau) dtau,   r_max = 4

rho_s is a step function, so the integral is exact: each workload with r <= r_max adds (r_max - r) / n.
AlgoPerf's own scoring code (scoring/score_submissions.py) approximates this integral with the trapezoid rule on
100 evenly spaced taus in [1, 4]; that differs from the exact value by at most half a grid step per workload
(1/198 of the score), and lrtrain computes the definition, not the approximation.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

R_MAX = 4.0  # AlgoPerf's upper integration limit: past 4x the best time a workload earns nothing


class BenchInputError(ValueError):
    """Input lrtrain-bench cannot use (a file, a key, a value): one line naming it and what would be valid."""


class TimesFileError(BenchInputError):
    """A times table that cannot be scored: names the file, the line or cell, and what would be valid."""


@dataclass
class Times:
    """Time to target of each submission (rows, in the table's order) on each workload (columns)."""

    workloads: list[str]
    rows: dict[str, list[float]]

    def ratios(self) -> dict[str, list[float]]:
        """Each time over the best time on its workload; inf where the target was not reached (by this submission,
        or by any)."""
        best = [min(times[j] for times in self.rows.values()) for j in range(len(self.workloads))]
        return {name: [t / b if math.isfinite(t) else math.inf for t, b in zip(times, best)]
                for name, times in self.rows.items()}


def profile(ratios: list[float], tau: float) -> float:
    """rho(tau): the fraction of workloads whose ratio is <= tau."""
    return sum(r <= tau for r in ratios) / len(ratios)


def score(ratios: list[float], r_max: float = R_MAX) -> float:
    """The integral of rho over [1, r_max] divided by r_max - 1, exactly."""
    if not r_max > 1:
        raise ValueError(f"r_max={r_max}: must be > 1")
    return sum(r_max - r for r in ratios if r <= r_max) / (len(ratios) * (r_max - 1))


def scores(times: Times, r_max: float = R_MAX) -> dict[str, float]:
    """Each submission's score, best first (ties keep the table's order)."""
    by_name = {name: score(r, r_max) for name, r in times.ratios().items()}
    return dict(sorted(by_name.items(), key=lambda item: -item[1]))


# ---------------------------------------------------------------------------------------------------- files

NOT_REACHED = ("inf", "")  # how a table says the target was not reached (any case)


def parse_time(text: str) -> float:
    """A cell: a number > 0, or inf/empty for not reached; ValueError otherwise."""
    text = text.strip()
    if text.lower() in NOT_REACHED:
        return math.inf
    value = float(text)  # ValueError for anything else
    if not (value > 0 and not math.isnan(value)):
        raise ValueError(text)
    return value


def read_times(path: Path) -> Times:
    """A CSV with a header (submission, then one column per workload) and one row per submission."""
    try:
        with open(path, newline="") as f:
            table = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except OSError as e:
        raise TimesFileError(f"{path}: cannot be read ({e.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise TimesFileError(f"{path}: not a CSV table of times ({e})") from None
    if len(table) < 2 or len(table[0]) < 2:
        raise TimesFileError(f"{path}: must be a CSV with a header (submission, then one column per workload) "
                             "and at least one row")
    workloads = [w.strip() for w in table[0][1:]]
    if len(set(workloads)) < len(workloads) or not all(workloads):
        raise TimesFileError(f"{path}: line 1: workload names must be distinct and not empty, got {workloads}")
    rows: dict[str, list[float]] = {}
    for line, row in enumerate(table[1:], 2):
        name = row[0].strip()
        if len(row) != len(table[0]):
            raise TimesFileError(f"{path}: line {line}: {len(row)} cells, the header has {len(table[0])}")
        if not name or name in rows:
            raise TimesFileError(f"{path}: line {line}: submission {name!r} must be named, and once")
        try:
            rows[name] = [parse_time(cell) for cell in row[1:]]
        except ValueError:
            bad = next(i for i, cell in enumerate(row[1:]) if not _is_time(cell))
            raise TimesFileError(f"{path}: line {line}, workload {workloads[bad]}: {row[1 + bad]!r} is not a time "
                                 "(a number > 0; inf or an empty cell: target not reached)") from None
    return Times(workloads, rows)


def _is_time(text: str) -> bool:
    try:
        parse_time(text)
    except ValueError:
        return False
    return True


def scores_path(times_path: Path) -> Path:
    """Beside the input: bench_times.csv -> bench_scores.csv, anything else <name>_scores.csv."""
    stem = times_path.stem
    stem = stem[: -len("_times")] if stem.endswith("_times") else stem
    return times_path.with_name(f"{stem}_scores.csv")


def write_scores(path: Path, times: Times, by_name: dict[str, float]) -> Path:
    """submission, score, then each workload's ratio to the best (inf: not reached), best first."""
    ratios = times.ratios()
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["submission", "score", *(f"ratio_{w}" for w in times.workloads)])
        for name, value in by_name.items():
            out.writerow([name, f"{value:.6f}", *(f"{r:.6g}" for r in ratios[name])])
    tmp.replace(path)
    return path
