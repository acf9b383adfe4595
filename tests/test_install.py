"""An installed wheel (not the editable checkout) carries the configs and lrtrain's launcher, and runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

from conftest import CONFIGS, REPO


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

    site = tmp_path / "site"
    subprocess.run([uv, "pip", "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import lrtrain.cli as c, lrtrain.paths as p, hydra_plugins.lrtrain_launcher as l; "
                            "print(c.__file__, p.config_dir(), l.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(site)) and where[1] == str(site / "lrtrain" / "configs")
    assert where[2].startswith(str(site))
    # a two-job sweep: the training runs, with the wheel's launcher
    run = subprocess.run([sys.executable, "-m", "lrtrain", "-m", "trainer.max_steps=5,6", "trainer.progress=none",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert [json.loads((tmp_path / "sweep" / job / "summary.json").read_text())["steps"] for job in "01"] == [5, 6]
