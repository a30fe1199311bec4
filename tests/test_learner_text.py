"""Learner-facing text (labkit's code and docstrings, the notebooks) speaks about the lab only: it never points at an
issue, a ticket or an article the reader does not have. Say what the target or recipe is, and why."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(r"\b(issues?|issue's|tickets?|ticket's)\b|\bsource article\b|\bthe article\b", re.IGNORECASE)


def _texts():
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        yield path, path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        yield path, "\n".join("".join(c["source"]) for c in cells)


def find_phrases(text: str) -> list[str]:
    """Each line of `text` that names something the learner never sees (an issue, a ticket, the source article)."""
    return [line.strip() for line in text.splitlines() if FORBIDDEN.search(line)]


def test_the_pattern_catches_what_it_should():
    assert find_phrases("The issue's targets") and find_phrases("(not in the issue)") and find_phrases("see ticket 12")
    assert find_phrases("the source article's recipe") and find_phrases("(the article's strategy)")
    assert not find_phrases("The lab's targets: accuracy within 0.3 points") and not find_phrases("tissue, issuer")


@pytest.mark.parametrize(("path", "text"), list(_texts()), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_no_references_the_learner_lacks(path, text):
    hits = find_phrases(text)
    assert not hits, f"{path.relative_to(ROOT)} names something the learner never sees: {hits[:5]}"
