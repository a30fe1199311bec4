"""Notebooks use only the documented surface: an experiment's names come from its module's `__all__` (its notebook
API, never one of its inner modules), a library module's from its `__all__` where it has one (else its public
names). A notebook reaching into an experiment's internals fails here, naming the notebook, the cell and the name."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb")) + sorted((REPO / "notebooks" / "solutions").glob("*.ipynb"))


def _allowed(module: str, name: str) -> str | None:
    """Why `name` of `module` is outside the documented surface (None: it is inside)."""
    parts = module.split(".")
    if parts[:2] == ["labkit", "experiments"] and len(parts) > 3:
        return f"{module} is inside an experiment; import from {'.'.join(parts[:3])} (its notebook API)"
    mod = importlib.import_module(module)
    if isinstance(getattr(mod, name, None), type(mod)) or (
            hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None):
        return None  # a subpackage or submodule: its own names are checked where they are used
    public = getattr(mod, "__all__", None)
    if public is None and parts[:2] == ["labkit", "experiments"] and len(parts) == 3:
        return f"{module} has no __all__ (an experiment's notebook API)"
    if public is not None and name not in public:
        return f"{module}.{name} is not in {module}.__all__"
    if name.startswith("_") or not hasattr(mod, name):
        return f"{module}.{name} is not a public name of {module}"
    return None


def surface_violations(source: str) -> list[str]:
    """Every import of a labkit name outside the documented surface in `source` (a notebook cell), and every
    attribute of an experiment module (`from labkit.experiments import hybrid as hy`; `hy.name`) outside its
    `__all__`."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    out, experiments = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labkit"):
            for alias in node.names:
                if why := _allowed(node.module, alias.name):
                    out.append(why)
                elif node.module == "labkit.experiments":
                    experiments[alias.asname or alias.name] = f"labkit.experiments.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("labkit.experiments.") and alias.asname:
                    experiments[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in experiments:
            if why := _allowed(experiments[node.value.id], node.attr):
                out.append(why)
    return out


def test_the_checker_catches_reaching_into_an_experiment():
    assert surface_violations("from labkit.experiments.qat_bert.pipeline import batches") == [
        "labkit.experiments.qat_bert.pipeline is inside an experiment; import from labkit.experiments.qat_bert "
        "(its notebook API)"]
    assert surface_violations("from labkit.experiments import deploy_bert as exp\nexp.REFERENCE.name") == [
        "labkit.experiments.deploy_bert.REFERENCE is not in labkit.experiments.deploy_bert.__all__"]
    assert surface_violations("from labkit.experiments.hybrid import HybridConfig, targets_table") == []
    assert surface_violations("from labkit.measure.stats import _no_such") != []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_import_only_the_documented_surface(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    found = [f"cell {i}: {why}" for i, cell in enumerate(cells) if cell["cell_type"] == "code"
             for why in surface_violations("".join(cell["source"]))]
    assert not found, f"{notebook.name} uses names outside the documented surface:\n" + "\n".join(found)
