"""An installed wheel (not the editable checkout) carries the configs, lrtrain's launcher and sweeper, and runs."""

from __future__ import annotations

import pytest

import json
import os
import shutil
import subprocess
import sys
import zipfile

from conftest import CONFIGS, REPO


@pytest.mark.slow
def test_wheel_carries_the_configs_and_runs_from_them(tmp_path):
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is the README's installer; it must be on PATH"
    subprocess.run([uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(REPO)], check=True,
                   capture_output=True)
    wheel = next((tmp_path / "dist").glob("lrtrain-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in CONFIGS.rglob("*.yaml"):
        assert f"lrtrain/configs/{yaml.relative_to(CONFIGS)}" in names
    assert "hydra_plugins/lrtrain_launcher/__init__.py" in names and "hydra_plugins/__init__.py" not in names
    assert "hydra_plugins/lrtrain_sweeper/__init__.py" in names

    site = tmp_path / "site"
    subprocess.run([uv, "pip", "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import lrtrain.cli as c, lrtrain.paths as p, hydra_plugins.lrtrain_launcher as l, "
                            "hydra_plugins.lrtrain_sweeper as s; print(c.__file__, p.config_dir(), l.__file__, "
                            "s.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(site)) and where[1] == str(site / "lrtrain" / "configs")
    assert where[2].startswith(str(site)) and where[3].startswith(str(site))
    # a two-trial grid search: the training runs, with the wheel's sweeper and launcher
    run = subprocess.run([sys.executable, "-m", "lrtrain", "-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid",
                          "trainer.max_steps=5,6", "trainer.progress=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    steps = [json.loads((tmp_path / "sweep" / job / "summary.json").read_text())["steps"] for job in "01"]
    assert sorted(steps) == [5, 6] and (tmp_path / "sweep" / "optuna.db").is_file()
