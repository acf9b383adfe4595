"""`logger=[...,mlflow]`: one MLflow run per lrtrain run, through MLflow's own client (`MlflowClient`).

Params are the flattened config; `lr`, `loss` (and `grad_norm`) are logged per step and the epoch metrics
with the optimizer step they ended on, in batches at the loop's flush points; summary.json, curves.png and
the best checkpoint become artifacts; the run ends FINISHED, FAILED or KILLED as the run did. The jobs of a
sweep are children of one parent run (tag `mlflow.parentRunId`), which the sweep report ends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import lrtrain
from lrtrain.errors import ConfigValueError, LoggerStoreError
from lrtrain.loggers import RunContext, Sink, flat_config, summary_metrics
from lrtrain.summary import Status, Summary
from lrtrain.writers import atomic_path

# lrtrain's statuses in MLflow's words
STATUS = {Status.COMPLETED: "FINISHED", Status.EARLY_STOPPED: "FINISHED", Status.PRUNED: "FINISHED",
          Status.DIVERGED: "FAILED", Status.FAILED: "FAILED", Status.INTERRUPTED: "KILLED"}
PARENT_FILE = ".mlflow_parent_run"  # in the sweep dir: the parent run's id, written by the first job
_MAX_PARAM = 6000  # MLflow's limit on a param value's length


class MLflowLogger(Sink):
    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: Optional[str] = None,
                 log_checkpoint: bool = True):
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigValueError("logger", "mlflow", "a logger that is installed: mlflow is not; install it "
                                   "with `pip install 'lrtrain[mlflow]'` (or `uv sync --extra mlflow`)")
        if not tracking_uri:
            raise ConfigValueError("tracking_uri", tracking_uri, "an MLflow tracking URI, e.g. sqlite:///outputs/mlflow.db")
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.artifact_location, self.log_checkpoint = artifact_location, log_checkpoint
        self.client: Any = None
        self.run_id: Optional[str] = None

    def on_start(self, ctx: RunContext) -> None:
        import mlflow.tracking  # noqa: F401  (its import sets the "mlflow" logger's level: first, then ours)

        for name in ("mlflow", "alembic"):  # a new database's migrations are logged at INFO: not the user's news
            logging.getLogger(name).setLevel(logging.WARNING)
        # Everything that touches the store first happens here, before the first step: a store that cannot be
        # used (not a database, read-only, a server that refuses) is one line naming the key, tried once.
        try:
            with _one_try():
                self._start(ctx)
        except Exception as e:
            raise _store_error(self.tracking_uri, self._sqlite_file(), e) from None

    def _start(self, ctx: RunContext) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        database = self._sqlite_file()
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        # the client opens the store, which creates a new database's tables: two jobs of a parallel sweep doing it
        # at once fail with "table ... already exists"
        with _exclusive(database.with_name(database.name + ".lock") if database is not None else None):
            self.client = client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment_id = experiment(client, self.experiment_name, self._artifact_root())
        self.out_dir, self.step_columns = ctx.out_dir, ctx.step_columns
        tags = {"lrtrain.run_dir": str(ctx.out_dir), "lrtrain.version": lrtrain.__version__}
        if ctx.sweep_dir is not None:
            tags["mlflow.parentRunId"] = parent_run(client, experiment_id, ctx.sweep_dir)
            tags["lrtrain.job"] = str(ctx.job_num)
        id_file = ctx.out_dir / ".mlflow_run_id"
        if ctx.resumed_in_place and id_file.is_file():  # the same MLflow run goes on
            self.run_id = id_file.read_text().strip()
            client.update_run(self.run_id, status="RUNNING")
            return
        name = ctx.out_dir.name if ctx.sweep_dir is None else f"job {ctx.job_num}"
        self.run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        id_file.write_text(self.run_id + "\n")
        params = [Param(k, str(v)[:_MAX_PARAM]) for k, v in flat_config(ctx.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[i:i + 100])

    def on_steps(self, rows: list[list[Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(row[i]), now, int(row[0]))
                   for row in rows for i, name in enumerate(self.step_columns) if name not in ("step", "epoch", "rollbacks")]
        self._log(metrics)

    def on_epoch(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # the epoch's lr is its last step's, already logged with the steps
        self._log([Metric(k, float(v), now, int(row["step"])) for k, v in row.items() if k not in ("step", "lr")])

    def on_end(self, summary: Summary) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log([Metric(f"summary/{k}", v, now, summary.steps or 0) for k, v in summary_metrics(summary).items()])
        out = self.out_dir
        for name in ("summary.json", "curves.png"):
            if (out / name).is_file():
                self.client.log_artifact(self.run_id, str(out / name))
        if self.log_checkpoint:
            best = next((p for p in (out / "checkpoints" / "best.pt", out / "checkpoints" / "last.pt")
                         if p.is_file()), None)
            if best is not None:
                self.client.log_artifact(self.run_id, str(best), artifact_path="checkpoints")
        self.client.set_terminated(self.run_id, status=STATUS.get(summary.status, "FAILED"))
        self.run_id = None

    def _log(self, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def _sqlite_file(self) -> Optional[Path]:
        """The database file of a SQLite tracking URI, else None."""
        prefix = "sqlite:///"
        return Path(self.tracking_uri.removeprefix(prefix)) if self.tracking_uri.startswith(prefix) else None

    def _artifact_root(self) -> Optional[str]:
        if self.artifact_location:
            return self.artifact_location
        database = self._sqlite_file()  # artifacts beside the database, not in the working directory
        return (database.resolve().parent / "mlartifacts").as_uri() if database is not None else None

    @staticmethod
    def end_sweep(sweep_dir: Path, succeeded: bool, tracking_uri: str, **_: Any) -> None:
        """Called by the sweep report: end the sweep's parent run and attach the sweep's summary."""
        id_file = Path(sweep_dir) / PARENT_FILE
        if not id_file.is_file():
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        run_id = id_file.read_text().strip()
        for name in ("sweep_summary.csv", "sweep.png"):
            if (Path(sweep_dir) / name).is_file():
                client.log_artifact(run_id, str(Path(sweep_dir) / name))
        client.set_terminated(run_id, status="FINISHED" if succeeded else "FAILED")


def _store_error(uri: str, database: Optional[Path], e: BaseException) -> LoggerStoreError:
    where = f"{database}: " if database is not None else ""
    return LoggerStoreError(f"logger.mlflow.tracking_uri={uri}: cannot use this MLflow tracking store "
                            f"({where}{_store_reason(e)})")


def _store_reason(e: BaseException) -> str:
    """The cause of a store's failure in a few words: SQLite's own message, or what the connection met,
    without the libraries' wrapping (SQLAlchemy's SQL and links, urllib3's retry history)."""
    import re

    chain, seen = e, []
    while chain is not None and len(seen) < 10:  # SQLAlchemy's error (whose .orig is SQLite's) may be wrapped
        seen.append(chain)
        chain = chain.__cause__ or chain.__context__
    database = next((c.orig for c in seen if getattr(c, "orig", None) is not None), None)
    text = str(database or e)
    for needle, reason in (("Connection refused", "the server refused the connection"),
                           ("timed out", "the server did not answer in time"),
                           ("Name or service not known", "no such host"),
                           ("nodename nor servname", "no such host")):
        if needle in text:
            return reason
    http = re.search(r"Response: (.*)", text) or re.search(r"status code (\d+)", text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    if http:
        first = f"{first[:120]} {http.group(0)[:120]}"
    return first[:240]


# While the store is first tried: no retries, a short timeout (MLflow's defaults, 7 retries with backoff and
# 120 s, keep a refusing server busy for minutes). A value the user set wins.
_FIRST_TRY = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class _one_try:
    def __enter__(self) -> None:
        self.set = [k for k in _FIRST_TRY if k not in os.environ]
        os.environ.update({k: _FIRST_TRY[k] for k in self.set})
        # MLflow logs a failing database's error with its traceback at ERROR: the failure is said once, by us
        self.logger = logging.getLogger("mlflow")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc: Any) -> None:
        for k in self.set:
            os.environ.pop(k, None)
        self.logger.setLevel(self.level)


@contextlib.contextmanager
def _exclusive(lock_path: Optional[Path]) -> Iterator[None]:
    """One process at a time inside: an advisory lock on `lock_path`, released when the file closes or its holder
    dies. None, or a file that cannot be made (a read-only directory, where nothing can be created either), runs
    unlocked, and what then fails says why."""
    try:
        lock = open(lock_path, "a") if lock_path is not None else None
    except OSError:
        lock = None
    if lock is None:
        yield
        return
    import fcntl

    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def experiment(client: Any, name: str, artifact_location: Optional[str]) -> str:
    """The id of experiment `name`, created if new (by whichever job of a parallel sweep gets there first)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it in the meantime
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def parent_run(client: Any, experiment_id: str, sweep_dir: Path) -> str:
    """The sweep's parent run: the first job past `<sweep dir>/.mlflow_parent_run.lock` creates it and writes its
    id; the others (parallel launchers) read the id."""
    id_file = Path(sweep_dir) / PARENT_FILE
    with _exclusive(id_file.with_suffix(".lock")):
        if id_file.is_file():
            return id_file.read_text().strip()
        run_id = client.create_run(experiment_id, run_name=f"sweep {Path(sweep_dir).name}",
                                   tags={"lrtrain.sweep_dir": str(sweep_dir)}).info.run_id
        with atomic_path(id_file) as tmp:
            tmp.write_text(run_id + "\n")
        return run_id
