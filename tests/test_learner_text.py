"""Learner-facing text (labkit's code and docstrings, the notebooks and their solutions, the README and the guides)
speaks about the lab only: it never points at an issue, a ticket, an article or a recipe the reader does not have,
nor at the project's history (earlier versions, sessions). Say what the target or recipe is, and why."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(
    r"\b(issues?|issue's|tickets?|ticket's)\b"
    r"|\bsource (article|recipe)s?\b|\bthe (article|recipe)'s (own )?(scale|strategy|choice)\b|\bthe article\b"
    r"|\b(the|its|a) first version\b|\b(earlier|previous|last|another|an earlier) (helper )?sessions?\b"
    r"|\bproject(?:'s)? history\b|\bpull requests?\b|\bthe brief\b",
    re.IGNORECASE)


def _texts():
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        yield path, path.read_text(encoding="utf-8")
    for path in sorted([*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "notebooks").glob("solutions/*.ipynb")]):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        yield path, "\n".join("".join(c["source"]) for c in cells)
    for path in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]):
        if path.is_file():
            yield path, path.read_text(encoding="utf-8")


def find_phrases(text: str) -> list[str]:
    """Each phrase of `text` (with a little context) that names something the learner never sees; phrases may run
    over a line break, as in a wrapped docstring."""
    flat = re.sub(r"[\s#\"']*\n[\s#\"']*", " ", text)  # join wrapped lines, comment and string continuations
    return [flat[max(0, m.start() - 40):m.end() + 40].strip() for m in FORBIDDEN.finditer(flat)]


def test_the_pattern_catches_what_it_should():
    assert find_phrases("The issue's targets") and find_phrases("(not in the issue)") and find_phrases("see ticket 12")
    assert find_phrases("the source article's recipe") and find_phrases("(the article's strategy)")
    assert find_phrases("the source recipe's own scale") and find_phrases("The source recipe's selection")
    assert find_phrases("The first\n    version of this model added every part")
    assert find_phrases("as in an earlier session") and find_phrases("the project's history")
    assert find_phrases("fixed in issue #24") and find_phrases("the ticket says") and find_phrases("per the source recipe")
    assert find_phrases("The first version of the model trained every layer")
    assert not find_phrases("The lab's targets: accuracy within 0.3 points") and not find_phrases("tissue, issuer")
    assert not find_phrases("the recipe of notebook 03") and not find_phrases("the first token's version")


@pytest.mark.parametrize(("path", "text"), list(_texts()), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_no_references_the_learner_lacks(path, text):
    hits = find_phrases(text)
    assert not hits, f"{path.relative_to(ROOT)} names something the learner never sees: {hits[:5]}"
