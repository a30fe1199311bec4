"""The lessons teach in the open: each checks >= 3 claims with `expect`, ends with exercises that have check cells,
has a solutions notebook, and is committed without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = ["00_setup_check", "01_qat_bert", "02_flash_attention_llama", "03_selective_hybrid"]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_checks_claims_and_has_exercises(name):
    cells = _cells(NOTEBOOKS / f"{name}.ipynb")
    start = next((i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## Exercises" in _source(c)), None)
    assert start is not None, f"{name} has no '## Exercises' section"
    lesson_checks = sum(_source(c).count("expect(") for c in cells[:start] if c["cell_type"] == "code")
    assert lesson_checks >= 3, f"{name} checks only {lesson_checks} claims with expect()"
    exercise_checks = [c for c in cells[start:] if c["cell_type"] == "code" and "expect(" in _source(c)]
    assert 3 <= len(exercise_checks) <= 5, f"{name} has {len(exercise_checks)} exercise check cells (want 3 to 5)"
    assert (NOTEBOOKS / "solutions" / f"{name}_solutions.ipynb").is_file(), f"{name} has no solutions notebook"


@pytest.mark.parametrize("path", sorted([*NOTEBOOKS.glob("[0-9]*.ipynb"), *NOTEBOOKS.glob("solutions/*.ipynb")]),
                         ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(_cells(path)) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: cells {dirty[:5]} have outputs; clear them with jupyter nbconvert --clear-output"
