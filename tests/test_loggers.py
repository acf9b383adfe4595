"""The `logger` group: CSV (always), TensorBoard with HParams, MLflow on a real SQLite store, W&B offline, read
back with each tool's own reader and compared with the run's CSV files."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_lrtrain

QUIET = ["trainer.max_epochs=2", "trainer.progress=none"]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_default_loggers_write_tensorboard_hparams(lrtrain):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    r = lrtrain(*QUIET, "optimizer.lr=0.003")
    assert r.returncode == 0, r.stderr
    events = EventAccumulator(str(r.run_dir / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optimizer.lr"].number_value == 0.003
    assert hparams["scheduler._target_"].string_value == "lrtrain.schedules.Constant"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    summary = r.summary()
    assert {"hparams/best_value", "hparams/final_val_acc", "hparams/final_train_loss"} <= metric_tags
    best = events.Scalars("hparams/best_value")
    assert [e.value for e in best] == [pytest.approx(summary["best_value"], rel=1e-6)]
    # the per-epoch scalars are the metrics.csv rows
    val = events.Scalars("val_loss")
    metrics = r.csv("metrics.csv")
    assert [(e.step, e.value) for e in val] == [(int(m["step"]), pytest.approx(float(m["val_loss"]), rel=1e-6))
                                               for m in metrics]
    assert (r.run_dir / "curves.png").is_file()


def test_tensorboard_checksums_events_in_c_and_its_reader_accepts_them(tmp_path):
    """The event writer gets google-crc32c's checksum; TensorBoard's own reader, which checks each record's
    checksum with its pure-Python one, reads every per-step value back."""
    from types import SimpleNamespace

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    from lrtrain.loggers import TensorBoardLogger

    logger = TensorBoardLogger(hparams=False)
    logger.on_start(SimpleNamespace(out_dir=tmp_path, config={}, step_columns=["step", "epoch", "lr", "loss"]))
    assert record_writer.masked_crc32c is not pywrap_tensorflow.masked_crc32c
    rows = [[step, 0, 0.1 / (step + 1), 2.0 - step / 100] for step in range(300)]
    logger.on_steps(rows)
    logger.on_epoch({"epoch": 0, "step": 300, "val_loss": 0.5})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss_step")] == [
        (r[0], pytest.approx(r[3], rel=1e-6)) for r in rows]
    assert [e.value for e in events.Scalars("val_loss")] == [0.5]


@pytest.mark.parametrize("loggers, tensorboard, curves", [("[csv]", False, True), ("[tensorboard]", True, False)])
def test_the_csv_outputs_are_always_written(lrtrain, loggers, tensorboard, curves):
    r = lrtrain(*QUIET, f"logger={loggers}")
    assert r.returncode == 0, r.stderr
    assert len(r.csv("metrics.csv")) == 2 and r.csv("steps.csv") and r.summary()["status"] == "completed"
    assert (r.run_dir / "tensorboard").is_dir() == tensorboard
    assert (r.run_dir / "curves.png").is_file() == curves


@pytest.mark.parametrize("override, says", [
    ("trainer.mode=max", "trainer.monitor_mode"),
    ("trainer.tensorboard=false", "logger=[csv]"),
    ("trainer.plots=false", "logger.csv.plots"),
    ("+logger.csv.colour=red", "logger.csv.colour='red': must be a key of the csv logger (plots)"),
    ("logger=[csv,neptune]", "logger=neptune: no such option; valid: csv, mlflow, tensorboard, wandb"),
])
def test_old_and_wrong_logger_keys_are_one_line_errors(lrtrain, override, says):
    r = lrtrain(*QUIET, override)
    assert r.returncode == 2
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_mlflow_missing_says_how_to_install(monkeypatch):
    import importlib.util

    from lrtrain.errors import ConfigValueError
    from lrtrain.mlflow_logger import MLflowLogger

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigValueError, match=r"pip install 'lrtrain\[mlflow\]'"):
        MLflowLogger(tracking_uri="sqlite:///x.db", experiment_name="e")


def _mlflow_runs(db: Path) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("lrtrain")
    return client, client.search_runs([experiment.experiment_id])


def test_mlflow_run_matches_the_csv_files(lrtrain, tmp_path):
    r = lrtrain(*QUIET, "logger=[csv,tensorboard,mlflow]", "optimizer.lr=0.002")
    assert r.returncode == 0, r.stderr
    db = tmp_path / "outputs" / "mlflow.db"
    assert sqlite3.connect(db).execute("select count(*) from runs").fetchone() == (1,)  # a real SQLite store
    client, runs = _mlflow_runs(db)
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.tags["lrtrain.run_dir"] == str(r.run_dir)
    assert run.data.params["optimizer.lr"] == "0.002" and run.data.params["model._target_"] == "lrtrain.models.MLP"
    for column in ("val_loss", "train_acc", "val_acc"):
        history = client.get_metric_history(run.info.run_id, column)
        assert [(m.step, m.value) for m in history] == [(int(row["step"]), float(row[column]))
                                                        for row in r.csv("metrics.csv")]
    steps = r.csv("steps.csv")
    for column in ("lr", "loss"):
        history = sorted(client.get_metric_history(run.info.run_id, column), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(int(row["step"]), float(row[column])) for row in steps]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "curves.png", "checkpoints"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
    assert json.loads(local.read_text())["best_value"] == r.summary()["best_value"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]


@pytest.mark.slow
def test_mlflow_sweep_is_a_parent_with_a_child_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    # job 1 diverges: its child run ends FAILED, and so does the sweep's parent run
    r = run_lrtrain("-m", *QUIET, "logger=[csv,mlflow]", "optimizer.lr=0.001,1000",
                    "early_stopping.divergence_threshold=5", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    client, runs = _mlflow_runs(tmp_path / "outputs" / "mlflow.db")
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = sorted((run for run in runs if "mlflow.parentRunId" in run.data.tags),
                      key=lambda run: run.data.tags["lrtrain.job"])
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert [float(c.data.params["optimizer.lr"]) for c in children] == [0.001, 1000]
    assert [c.info.status for c in children] == ["FINISHED", "FAILED"]
    assert parents[0].info.status == "FAILED"
    assert "sweep_summary.csv" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    statuses = [json.loads((sweep / job / "summary.json").read_text())["status"] for job in "01"]
    assert statuses == ["completed", "diverged"]


def test_wandb_missing_or_misconfigured_is_one_line(compose, monkeypatch):
    import importlib.util

    from lrtrain.build import build_loggers
    from lrtrain.errors import ConfigValueError

    with pytest.raises(ConfigValueError) as e:
        build_loggers(compose("logger=[csv,wandb]", "logger.wandb.mode=cloud").logger)
    assert str(e.value) == ("logger.wandb.mode='cloud': must be one of online, offline, disabled, or null "
                            "(W&B reads WANDB_MODE)")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigValueError) as e:
        build_loggers(compose("logger=[csv,wandb]").logger)
    assert str(e.value) == ("logger.wandb.logger='wandb': must be a logger that is installed: wandb is not; install "
                            "it with `pip install 'lrtrain[wandb]'` (or `uv sync --extra wandb`)")


def _wandb_records(run_file: Path) -> list[dict]:
    """Every record of a W&B transaction log (`run-<id>.wandb`), read by W&B's own reader (`wandb leet inspect`,
    which W&B's Go core implements), as JSON."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_file)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.slow  # about 12 s: a run, W&B's service process, and its reader
def test_wandb_offline_run_matches_the_csv_files(lrtrain, tmp_path):
    """WANDB_MODE=offline is honoured (logger.wandb.mode is left null): nothing leaves the machine, and the run
    W&B recorded in the run dir holds the composed config and the very rows of steps.csv and metrics.csv."""
    home = tmp_path / "wandb-home"
    env = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "WANDB_CONFIG_DIR": str(home / "config"),
           "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_DATA_DIR": str(home / "data")}
    r = lrtrain(*QUIET, "logger=[csv,wandb]", "optimizer.lr=0.002", "logger.wandb.tags=[lr-study,digits]", env=env)
    assert r.returncode == 0, r.stderr
    (run_file,) = (r.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert run_file.stem == "run-" + (r.run_dir / ".wandb_run_id").read_text().strip()
    records = _wandb_records(run_file)
    (run,) = [rec["run"] for rec in records if rec["type"] == "run"]
    assert run["project"] == "lrtrain" and run["display_name"] == r.run_dir.name
    assert run["tags"] == ["lr-study", "digits"]
    config = run["config"]["update"]
    assert config["optimizer"]["lr"] == 0.002 and config["model"]["_target_"] == "lrtrain.models.MLP"
    assert config["logger"]["wandb"]["mode"] is None
    history = [rec["history"]["item"] for rec in records if rec["type"] == "history"]
    steps = [row for row in history if "loss" in row]
    epochs = [row for row in history if "val_loss" in row]
    assert len(steps) + len(epochs) == len(history)
    # every value exactly as in the CSV files (both write a float's shortest round-tripping form)
    assert [{k: row[k] for k in ("step", "epoch", "lr", "loss")} for row in steps] == \
        [{k: float(v) for k, v in row.items()} for row in r.csv("steps.csv")]
    metrics = r.csv("metrics.csv")
    assert [{k: row[k] for k in metrics[0] if k != "lr"} for row in epochs] == \
        [{k: float(v) for k, v in row.items() if k != "lr"} for row in metrics]
    summary = {}
    for rec in records:
        if rec["type"] == "summary":
            summary.update(rec["summary"].get("update", {}))
    assert summary["status"] == "completed" and summary["best_value"] == r.summary()["best_value"]
    assert summary["final_val_acc"] == float(metrics[-1]["val_acc"])
    assert [rec["exit"]["exit_code"] for rec in records if rec["type"] == "exit"] == [0]


def _refusing_url() -> str:
    """An http:// URL on this machine where nothing listens: the connection is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("store", ["not a database", "refusing server"])
def test_an_mlflow_store_that_cannot_be_used_is_one_line_naming_the_key(tmp_path, store):
    """Tried once when the run starts (no retries: MLflow's seven with backoff took four minutes)."""
    import time

    from lrtrain.errors import EXIT_FAILED, LoggerStoreError, describe
    from lrtrain.loggers import RunContext
    from lrtrain.mlflow_logger import MLflowLogger

    if store == "not a database":
        (tmp_path / "notes.txt").write_text("my notes\n")
        uri, why = f"sqlite:///{tmp_path / 'notes.txt'}", f"{tmp_path / 'notes.txt'}: file is not a database"
    else:
        uri, why = _refusing_url(), "the server refused the connection"
    started = time.monotonic()
    with pytest.raises(LoggerStoreError) as e:
        MLflowLogger(uri, "lrtrain").on_start(RunContext(tmp_path, ["step", "loss"], ["epoch"], {}))
    assert time.monotonic() - started < 30
    assert describe(e.value) == (f"logger.mlflow.tracking_uri={uri}: cannot use this MLflow tracking store ({why})",
                                 EXIT_FAILED)
    assert (tmp_path / "notes.txt").read_text() == "my notes\n" if store == "not a database" else True


@pytest.mark.slow
@pytest.mark.parametrize("store", ["not a database", "read-only", "refusing server"])
def test_an_mlflow_store_that_cannot_be_used_stops_the_run_before_training(lrtrain, tmp_path, store):
    import shutil
    import subprocess
    import sys

    from conftest import lrtrain_env

    run = tmp_path / "run"
    args = [*QUIET, "logger=[csv,mlflow]", "logger.csv.plots=false", f"hydra.run.dir={run}"]
    if store == "not a database":
        (tmp_path / "notes.txt").write_text("my notes\n")
        r = lrtrain(*args, f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'notes.txt'}")
        code, err, why = r.returncode, r.stderr, f"{tmp_path / 'notes.txt'}: file is not a database"
    elif store == "refusing server":
        r = lrtrain(*args, f"logger.mlflow.tracking_uri={_refusing_url()}", timeout=120)
        code, err, why = r.returncode, r.stderr, "the server refused the connection"
    else:  # a database on a read-only mount (a private one: unshare -m, root only)
        store_dir = tmp_path / "store"
        first = lrtrain(*args, f"logger.mlflow.tracking_uri=sqlite:///{store_dir / 'mlflow.db'}")
        assert first.returncode == 0, first.stderr
        shutil.rmtree(run)
        if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
            pytest.skip("a read-only mount needs root and unshare")
        script = (f"mount --bind {store_dir} {store_dir} && mount -o remount,ro,bind {store_dir} && exec \"$@\"")
        p = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m", "lrtrain", *args,
                            f"logger.mlflow.tracking_uri=sqlite:///{store_dir / 'mlflow.db'}"], cwd=tmp_path,
                           capture_output=True, text=True, env=lrtrain_env(), timeout=300)
        code, err, why = p.returncode, p.stderr, f"{store_dir / 'mlflow.db'}: attempt to write a readonly database"
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.strip().startswith("lrtrain: error: logger.mlflow.tracking_uri=") and err.strip().endswith(f"({why})")
    assert len((run / "steps.csv").read_text().splitlines()) <= 1  # no step was taken
