"""An installed wheel (not the editable checkout) carries the configs and runs."""

from __future__ import annotations

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

    site = tmp_path / "site"
    subprocess.run([uv, "pip", "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import lrtrain.cli as c; print(c.__file__, c._config_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(site)) and where[1] == str(site / "lrtrain" / "configs")
    run = subprocess.run([sys.executable, "-m", "lrtrain", "trainer.max_steps=5", "trainer.progress=none",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "summary.json").is_file()
