"""Every bad input is one line: `describe` turns library failures (Hydra's wrappers, torch's allocator, a
DataLoader worker's re-raised error) into the key or file and what would be valid."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import QUIET, run_lrtrain
from datafiles import write_image_folder
from lrtrain.checkpoints import check_layout, load, save_atomic
from lrtrain.errors import EXIT_CONFIG, EXIT_FAILED, CheckpointError, ConfigValueError, WriteError, describe


@pytest.mark.parametrize("overrides,message", [
    (["dataset=regression", "dataset.num_samples=100000000000000", "model=linear"],
     "dataset: too large to build: out of memory: one allocation of 3.55 PiB failed; make it smaller"),
    (["dataset.val_fraction=0.9999"],
     "dataset.val_fraction=0.9999: must be small enough to leave training examples: of 1797 examples it holds "
     "out 1797, leaving an empty training split (at most 0.9997 here)"),
    (["model._target_=os.system"],  # Hydra's reason is on the message's later lines
     "model: Target 'os.system' is blocklisted because it allows config data to control executable behavior or "
     "belongs to an execution-capable target family. It cannot be authorized with "
     "HYDRA_INSTANTIATE_ALLOWLIST_OVERRIDE."),
])
def test_bad_sizes_are_one_line_before_training(compose, tmp_path, overrides, message):
    from lrtrain.build import build

    with pytest.raises(Exception) as e:
        build(compose(*overrides, *QUIET), tmp_path)
    assert describe(e.value) == (message, EXIT_CONFIG)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("overrides,keys", [
    (["model.hidden=[100000000000]"], "model.hidden=[100000000000]"),
    (["model=vit", "model.depth=100000000"],  # built, it grew by 120 MB/s until the out-of-memory killer
     "model.depth=100000000, model.width=64, model.mlp_width=128, model.patch_size=4"),
    (["model=cnn", "model.channels=[1000000,1000000]"], "model.channels=[1000000, 1000000], model.hidden=128"),
])
def test_models_too_large_for_memory_are_refused_before_building(compose, tmp_path, overrides, keys):
    import re

    from lrtrain.build import build

    with pytest.raises(ConfigValueError) as e:
        build(compose(*overrides, *QUIET), tmp_path)
    message, code = describe(e.value)
    assert code == EXIT_CONFIG and re.fullmatch(
        rf"model='\w+': must be a model that fits in memory: {re.escape(keys)} gives about [\d.e+]+ parameters, "
        r"whose weights and gradients alone take [\d.]+ [TPE]iB, and cpu has [\d.]+ \w+ available; make it smaller",
        message), message


@pytest.mark.parametrize("key", ["trainer.seed", "dataset.split_seed", "dataset.seed"])
@pytest.mark.parametrize("value", [2**64, -2**63 - 1])
def test_seeds_torch_cannot_take_are_refused(compose, key, value):
    from conftest import config_error

    extra = ["dataset=regression"] if key == "dataset.seed" else []
    assert config_error(compose, *extra, f"{key}={value}") == (
        f"{key}={value}: must be an integer in [-2**63, 2**64 - 1] (torch's seed range)")


@pytest.mark.parametrize("overrides,message", [
    (["hydra/launcher=fused", "hydra.launcher.curve_wrokers=1"],
     "hydra.launcher.curve_wrokers: unknown key; valid keys here: curve_workers"),
    (["hydra/launcher=fused", "+hydra.launcher.curve_wrokers=1"],  # past the schema: once a TypeError
     "hydra.launcher.curve_wrokers: unknown key; valid keys here: curve_workers"),
    (["hydra/launcher=fused", "hydra.launcher.curve_workers=-1"],
     "hydra.launcher.curve_workers=-1: must be an integer >= 0"),
    (["hydra/launcher=fused", "hydra.launcher.curve_workers=two"],
     "hydra.launcher.curve_workers: Value 'two' of type 'str' could not be converted to Integer"),
    (["+hydra.launcher.n_jobs=2"],
     "hydra.launcher.n_jobs: unknown key; hydra/launcher=lrtrain has no keys (options that have: fused, slurm)"),
])
def test_a_bad_launcher_setting_is_one_line_before_any_job(lrtrain, tmp_path, overrides, message):
    r = lrtrain("-m", *overrides, "optimizer.lr=0.1,0.01", *QUIET, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert (r.returncode, r.stderr.strip()) == (2, f"lrtrain: error: {message}")
    assert not (tmp_path / "sweep" / "0").exists()


def test_a_worker_error_names_the_file(tmp_path):
    """A corrupt PNG decoded in a DataLoader worker: the worker's error reaches the main process as text."""
    root = write_image_folder(tmp_path / "images")
    bad = root / "cat" / "3.png"
    bad.write_bytes(bad.read_bytes()[:60])
    r = run_lrtrain("dataset=folder", f"dataset.root={root}", "dataset.image_size=8", "dataset.num_workers=1",
                    "model=cnn", "model.channels=[4]", "model.hidden=8", *QUIET, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"lrtrain: error: {bad}: not a readable image (")
    assert len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- checkpoints


GOOD = {"model": {}, "optimizer": {}, "schedule": {}, "early_stopping": {}, "step": 1, "epoch": 0,
        "position": {"step": 1, "epoch": 0, "batch": 0}, "rng": {"python": 0, "numpy": 0, "torch": 0}, "config": {}}


@pytest.mark.parametrize("change,why", [
    ({"position": None}, "missing 'position'"),
    ({"rng": None}, "missing 'rng'"),
    ({"schedule": None}, "missing 'schedule'"),
    ({"position": [1, 2]}, "its 'position' is a list, expected a dict"),
    ({"position": {"step": 1, "epoch": 0, "batch": 0, "cursor": 3}}, "its position has 'cursor', unknown here"),
    ({"position": {"step": 1, "epoch": 0}}, "its position lacks 'batch'"),
    ({"rng": {"torch": 0}}, "its rng lacks 'python', 'numpy'"),
])
def test_checkpoints_of_another_layout_are_refused(tmp_path, change, why):
    check_layout(tmp_path / "good.pt", GOOD, {"step", "epoch", "batch"})  # the control
    ckpt = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = tmp_path / "old.pt"
    with pytest.raises(CheckpointError) as e:
        check_layout(path, ckpt, {"step", "epoch", "batch"})
    assert str(e.value) == f"{path}: not an lrtrain checkpoint of this version ({why})"


def test_resume_from_another_layout_is_one_line(lrtrain, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {}, "step": 3, "optimizer": {}}, path)
    r = lrtrain(f"trainer.resume={path}")
    assert (r.returncode, r.stderr.strip()) == (
        2, f"lrtrain: error: {path}: not an lrtrain checkpoint of this version (missing 'schedule')")


class _Code:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_code_payload_is_refused_without_torch_advice(tmp_path, protocol):
    import pickle

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": _Code(), "step": 1}, protocol=protocol))
    with pytest.raises(CheckpointError) as e:
        load(path)
    assert str(e.value).startswith((f"{path}: refused: it asks to load posix.system, which is code, not data",
                                     f"{path}: not a readable checkpoint (corrupt, or more than tensors"))
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """The checkpoint's temporary file (writers.atomic_path's, this process's) is a link to /dev/full, whose every
    write fails with ENOSPC as a full file system's does (torch's own writer said "enforce fail ... unexpected pos"
    for it, without the errno)."""
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}, "step": 1}, path)
    (path.parent / f".last.pt.{os.getpid()}.tmp").symlink_to("/dev/full")
    with pytest.raises(WriteError) as e:
        save_atomic({"model": {"w": torch.zeros(100_000)}, "step": 2}, path)
    assert str(e.value) == f"no space left on device writing {path} (the previous checkpoint, if any, is intact)"
    assert describe(e.value) == (str(e.value), EXIT_FAILED)
    assert load(path)["step"] == 1 and sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_a_full_disk_keeps_the_previous_json(tmp_path):
    from lrtrain.writers import write_json_atomic

    path = tmp_path / "summary.json"
    write_json_atomic({"status": "running"}, path)
    (tmp_path / f".summary.json.{os.getpid()}.tmp").symlink_to("/dev/full")  # the temporary's writes fail with ENOSPC
    with pytest.raises(WriteError) as e:
        write_json_atomic({"status": "completed", "final": list(range(10_000))}, path)
    assert str(e.value) == f"no space left on device writing {path}"
    assert json.loads(path.read_text()) == {"status": "running"} and os.listdir(tmp_path) == ["summary.json"]


def test_a_folder_in_the_way_of_a_temporary_json_is_named(tmp_path):
    from lrtrain.writers import write_json_atomic

    tmp = tmp_path / f".summary.json.{os.getpid()}.tmp"
    tmp.mkdir()
    with pytest.raises(WriteError) as e:
        write_json_atomic({"status": "completed"}, tmp_path / "summary.json")
    assert str(e.value) == f"could not write {tmp_path / 'summary.json'}: {tmp}: Is a directory"
    assert tmp.is_dir()  # not lrtrain's to remove


@pytest.mark.slow
def test_a_full_file_system_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """A real 6 MB tmpfs (a private mount: `unshare -m`, root only): the second epoch's checkpoint does not fit."""
    import shutil
    import subprocess
    import sys

    from conftest import lrtrain_env

    small, kept = tmp_path / "small", tmp_path / "kept"
    small.mkdir()
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and unshare")
    train = [sys.executable, "-m", "lrtrain", "model.hidden=[4096]", *QUIET, "trainer.max_epochs=2",
             f"hydra.run.dir={small / 'run'}"]
    # the mount lives as long as the shell: the run dir is copied out before it ends
    script = f'mount -t tmpfs -o size=6m tmpfs {small} && {{ "$@"; code=$?; cp -a {small / "run"} {kept}; exit $code; }}'
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *train], cwd=tmp_path, capture_output=True,
                       text=True, env=lrtrain_env(), timeout=300)
    last = small / "run" / "checkpoints" / "last.pt"
    assert (r.returncode, r.stderr.strip()) == (
        EXIT_FAILED, f"lrtrain: error: no space left on device writing {last} (the previous checkpoint, if any, "
                     "is intact)")
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert load(kept / "checkpoints" / "last.pt")["step"] == 45
    assert json.loads((kept / "summary.json").read_text())["status"] == "failed"


# -------------------------------------------------------------------------------------------- lrtrain-report


def _sweep(root):
    """A two-job sweep as lrtrain and Hydra leave it, reduced to what the report reads."""
    import json

    import yaml

    for job, lr in enumerate((0.01, 0.02)):
        d = root / str(job)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}"]))
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimizer": {"lr": lr}}))
        (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {}}}}))
        (d / "summary.json").write_text(json.dumps({
            "status": "completed", "stop_reason": None, "run_dir": str(d), "best_value": 0.5 + lr,
            "best_epoch": 0, "monitor": "val_loss", "mode": "min", "epochs": 1, "steps": 10,
            "train_seconds": 1.0, "final": {"val_loss": 0.5 + lr}}))
    return root


@pytest.mark.parametrize("file,content,why", [
    ("0/summary.json", "[1, 2]", "expected a JSON object (an lrtrain summary), found list"),
    ("1/summary.json", '{"status": ', "not JSON (Expecting value"),
    ("0/summary.json", '{"status": "completed", "best_value": "high"}',
     "best_value is 'high', expected a number (not an lrtrain summary?)"),
    ("1/summary.json", '{"status": "completed", "best_epoch": 1.5}', "best_epoch is 1.5, expected an integer"),
    ("0/.hydra/overrides.yaml", "5", "expected a list of overrides, found int (not written by Hydra?)"),
    ("0/.hydra/hydra.yaml", "- a", "expected Hydra's settings (a mapping), found list (not written by Hydra?)"),
    ("1/.hydra/config.yaml", "just text", "expected a config (a mapping), found str (not written by Hydra?)"),
    ("0/summary.json", "[" * 100_000 + "]" * 100_000, "not an lrtrain summary (JSON nested too deeply to read)"),
])
def test_report_on_malformed_job_files_names_the_file(tmp_path, capsys, file, content, why):
    from lrtrain.report import main

    sweep = _sweep(tmp_path / "sweep")
    main([str(sweep), "--no-plots"])  # the control: the intact sweep reports
    (sweep / file).write_text(content)
    with pytest.raises(SystemExit) as e:
        main([str(sweep), "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert err.startswith(f"lrtrain-report: error: {sweep / file}: {why}")


def _sweep_csv(sweep, name="sweep_summary.csv"):
    import csv

    with open(sweep / name, newline="") as f:
        return list(csv.DictReader(f))


def test_report_caps_a_huge_cause(tmp_path, capsys):
    """A crash or a hostile file can leave megabytes of stop_reason: the table and the CSV get its start."""
    from lrtrain.report import main

    sweep = _sweep(tmp_path / "sweep")
    path = sweep / "1" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "failed", "stop_reason": "x" * 5_000_000}))
    main([str(sweep), "--no-plots"])
    out = capsys.readouterr().out
    cause = {row["job"]: row["cause"] for row in _sweep_csv(sweep)}["1"]
    assert cause.startswith("xxx") and cause.endswith("... (5,000,000 characters in all)") and len(cause) < 600
    assert 0 < len(out) < 20_000 and "5,000,000 characters in all" in out.replace("\n", "")


def test_report_reads_a_nan_best_value_as_missing(tmp_path, capsys):
    """NaN is not JSON (lrtrain writes null): as a number it broke the best-first order and counted in n."""
    from lrtrain.report import main

    sweep = _sweep(tmp_path / "sweep")
    path = sweep / "0" / "summary.json"
    path.write_text(path.read_text().replace('"best_value": 0.51', '"best_value": NaN'))
    main([str(sweep), "--no-plots"])
    assert [row["job"] for row in _sweep_csv(sweep)] == ["1", "0"]  # the valid job first
    study = {row["configuration"]: row for row in _sweep_csv(sweep, "study_summary.csv")}
    assert (study["optimizer.lr=0.01"]["n"], study["optimizer.lr=0.02"]["n"]) == ("0", "1")
    assert study["optimizer.lr=0.01"]["rank"] == "2"


def test_report_says_which_folders_it_left_out(tmp_path, capsys):
    from lrtrain.report import main

    sweep = _sweep(tmp_path / "sweep")
    import shutil

    shutil.rmtree(sweep / "1" / ".hydra")
    main([str(sweep), "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert err == (f"lrtrain-report: left out 1 folder with a summary.json but no .hydra/ (what they ran is "
                   f"unknown): {sweep / '1'}")
    assert [row["job"] for row in _sweep_csv(sweep)] == ["0"]


def test_report_plots_a_sweep_whose_jobs_all_failed_without_warnings(tmp_path, capsys):
    """lr_sensitivity.png with no point: matplotlib's legend warning (with its source path) reached stderr."""
    import warnings

    from lrtrain.report import main

    sweep = _sweep(tmp_path / "sweep")
    for job in "01":
        path = sweep / job / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "status": "failed", "best_value": None}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        main([str(sweep)])
    assert (sweep / "lr_sensitivity.png").is_file() and capsys.readouterr().err == ""


def test_report_on_a_malformed_run_summary_names_it(tmp_path, capsys):
    from lrtrain.report import main

    run = _sweep(tmp_path / "sweep") / "0"
    (run / "summary.json").write_text('{"status": "completed", "epochs": "many"}')
    with pytest.raises(SystemExit) as e:
        main([str(run), "--no-plots"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (f"lrtrain-report: error: {run / 'summary.json'}: epochs is 'many', "
                                               "expected an integer (not an lrtrain summary?)")


def test_the_bad_inputs_script_on_a_sample(tmp_path):
    """scripts/bad_inputs.py's rule on three of its cases, one per tool (the lead runs them all)."""
    import importlib.util
    import sys

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "scripts" / "bad_inputs.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs"] = script  # its dataclasses look their module up
    spec.loader.exec_module(script)
    sample = [c for c in script.CASES if c.name in ("CIFAR batch with code", "schedule T_0=0",
                                                    "summary.json a list")]
    assert len(script.CASES) >= 50 and len({c.name for c in script.CASES}) == len(script.CASES)
    assert len(sample) == 3
    for case in sample:
        outcome = script.run(case, tmp_path)
        assert outcome.passed, (case.name, outcome.why, outcome.stderr)
