"""The import graph: no circles (counting imports inside functions too), no private names imported across
modules, and importing any module has no side effects (nothing registered, no Hydra app built)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lrtrain"
MODULES = sorted(f"lrtrain.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))


def _imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported lrtrain module, names taken from it) for every import statement in `module`, wherever it is."""
    tree = ast.parse((PACKAGE / f"{module.split('.')[1]}.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lrtrain."):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("lrtrain.")]
    return found


def test_no_import_circles():
    graph = {m: {target for target, _ in _imports(m) if target in MODULES} for m in MODULES}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for target in sorted(graph[m]):
            if state.get(target) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", MODULES)
def test_no_private_names_across_modules(module):
    private = [(target, name) for target, names in _imports(module) for name in names if name.startswith("_")]
    assert private == []


def test_importing_every_module_has_no_side_effects():
    code = ("import importlib\n"
            f"for m in {MODULES!r}: importlib.import_module(m)\n"
            "from hydra.core.config_store import ConfigStore\n"
            "from omegaconf import OmegaConf\n"
            "assert 'AdamConfig.yaml' not in ConfigStore.instance().repo, 'schemas registered'\n"
            "assert not OmegaConf.has_resolver('lrtrain_run_dir'), 'resolver registered'\n"
            "import sys\n"  # optional loggers are imported when a run uses them, not on the start-up path
            "assert not {'wandb', 'mlflow'} & set(sys.modules), 'an optional logger imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
