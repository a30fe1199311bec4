"""The lessons teach in the open: each checks >= 3 claims with `expect` before its exercises, labels every claim read
from a committed result file as such, uses no bare `assert`, ends with exercises that have check cells, has a
solutions notebook, and is committed without outputs."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = ["00_setup_check", "01_qat_bert", "01b_deploy_bert_cpu", "02_flash_attention_llama",
           "02b_triton_flash_attention", "03_selective_hybrid", "03b_making_8bit_fast", "04_qat_at_7b_fsdp"]
BEING_REWRITTEN = ["03_selective_hybrid"]
"""Lessons being rewritten on another branch while this rule was written: their test may fail (xfail) until that
work lands. The lead empties this list after merging it."""

EXERCISES = re.compile(r"^##\s+(\d+\s*·\s*)?Exercises\b", re.MULTILINE)
LOADERS = {"load_reference", "load_committed"}  # the functions that read committed result files
CHECKS = {"expect", "expect_committed"}


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _code(cell: dict) -> ast.Module:
    """A code cell as Python (IPython's `!` and `%` lines blanked)."""
    text = "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in _source(cell).splitlines())
    return ast.parse(text)


def _call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


class _Claims(ast.NodeVisitor):
    """Walks the cells in order, tracking which names hold data read from a committed file (assigned from a loader
    or from such names); records each `expect` call and whether it uses them, and each bare `assert`."""

    def __init__(self) -> None:
        self.committed: set[str] = set()
        self.calls: list[tuple[str, bool, bool, int]] = []  # (function, says committed, uses committed data, cell)
        self.asserts: list[int] = []
        self.cell = 0

    def _uses_committed(self, node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in self.committed:
                return True
            if isinstance(sub, ast.Call) and _call_name(sub) in LOADERS:
                return True
        return False

    def _bind(self, target: ast.AST, tainted: bool) -> None:
        for sub in ast.walk(target):
            if isinstance(sub, ast.Name):
                (self.committed.add if tainted else self.committed.discard)(sub.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            self._bind(target, self._uses_committed(node.value))

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        if node.value is not None:
            self._bind(node.target, self._uses_committed(node.value))

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.generic_visit(node)
        if self._uses_committed(node.value):
            self._bind(node.target, True)

    def visit_For(self, node: ast.For) -> None:
        self._bind(node.target, self._uses_committed(node.iter))
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self._bind(node.target, self._uses_committed(node.iter))
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.generic_visit(node)
        self._bind(ast.Name(node.name), any(self._uses_committed(s) for s in node.body))

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:  # an import binds its name afresh
            self.committed.discard((alias.asname or alias.name).split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_Assert(self, node: ast.Assert) -> None:
        self.asserts.append(self.cell)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        if name in CHECKS:
            says = name == "expect_committed" or any(
                k.arg == "source" and isinstance(k.value, ast.Constant) and k.value.value == "committed"
                for k in node.keywords)
            uses = any(self._uses_committed(a) for a in [*node.args, *(k.value for k in node.keywords)])
            self.calls.append((name, says, uses, self.cell))
        self.generic_visit(node)


def claims(cells: list[dict]) -> _Claims:
    """The `expect` calls and bare asserts of a notebook's code cells, in order."""
    walker = _Claims()
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            walker.cell = i
            for stmt in _code(cell).body:  # statement by statement, so names are bound in the order they run
                walker.visit(stmt)
    return walker


def lesson_problems(name: str) -> list[str]:
    """Every way lesson `name` breaks the rule (empty: it keeps it)."""
    cells = _cells(NOTEBOOKS / f"{name}.ipynb")
    start = next((i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and EXERCISES.search(_source(c))),
                 None)
    if start is None:
        return [f"{name} has no '## Exercises' section"]
    problems = []
    found = claims(cells)
    before = [c for c in found.calls if c[3] < start]
    if len(before) < 3:
        problems.append(f"{name} checks only {len(before)} claims with expect() before its exercises (want >= 3)")
    for fn, says, uses, cell in found.calls:
        if uses and not says:
            problems.append(f"{name} cell {cell}: {fn}() on data read from a committed file does not say so "
                            "(use expect_committed(..., file=...))")
        if says and not uses:
            problems.append(f"{name} cell {cell}: expect_committed() on data measured in this run (use expect())")
    problems += [f"{name} cell {cell}: a bare assert (state the claim with expect())" for cell in found.asserts]
    checks = [c for c in cells[start:] if c["cell_type"] == "code"
              and re.search(r"\bexpect(_committed)?\(|\battempt\(", _source(c))]
    if not 3 <= len(checks) <= 5:
        problems.append(f"{name} has {len(checks)} exercise check cells (want 3 to 5)")
    solutions = NOTEBOOKS / "solutions" / f"{name}_solutions.ipynb"
    if not solutions.is_file():
        problems.append(f"{name} has no solutions notebook")
    else:
        problems += [f"{solutions.name} cell {cell}: a bare assert" for cell in claims(_cells(solutions)).asserts]
    return problems


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(
    reason="being rewritten on another branch (BEING_REWRITTEN)", strict=False)) if n in BEING_REWRITTEN else n
    for n in LESSONS])
def test_lesson_checks_claims_and_has_exercises(name):
    problems = lesson_problems(name)
    assert not problems, "\n".join(problems)


def test_every_lesson_is_covered():
    found = sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.ipynb"))
    assert found == sorted(LESSONS), f"lessons on disk {found} against the list {LESSONS}"
    assert set(BEING_REWRITTEN) <= set(LESSONS)


def test_the_rule_catches_unlabelled_committed_claims_and_bare_asserts():
    def cell(text):
        return {"cell_type": "code", "source": [text]}

    found = claims([cell("ref = load_reference('x')\nrows = [r for r in ref['rows']]\nn = 3"),
                    cell("expect('a', len(rows), 2)\nexpect('b', n, 3)\nexpect_committed('c', n, 3)"),
                    cell("rows = [1, 2]\nexpect('d', len(rows), 2)\nassert n == 3")])
    assert [(c[0], c[1], c[2]) for c in found.calls] == [
        ("expect", False, True), ("expect", False, False), ("expect_committed", True, False), ("expect", False, False)]
    assert found.asserts == [2]


@pytest.mark.parametrize("path", sorted([*NOTEBOOKS.glob("[0-9]*.ipynb"), *NOTEBOOKS.glob("solutions/*.ipynb")]),
                         ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(_cells(path)) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: cells {dirty[:5]} have outputs; clear them with jupyter nbconvert --clear-output"
