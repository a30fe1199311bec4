"""labkit's layering (pyproject.toml, [tool.importlinter]): imports run one way down and siblings form no cycles.

Runs `lint-imports` on this checkout, so an upward import anywhere in labkit fails the unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = Path(sys.executable).parent / "lint-imports"
    return str(exe) if exe.exists() else (shutil.which("lint-imports") or "lint-imports")


def test_import_contracts_are_kept():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"lint-imports found a broken contract:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
    assert "0 broken" in proc.stdout
