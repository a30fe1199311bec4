"""Claims checked where they are made: one "expected vs measured" line per claim, and an error if it is false.

A notebook that says "the tiled kernel matches the reference" or "INT8 is at most 0.3x the size" states it with

    expect("tiled attention == reference", measured=out, expected=ref, tol=1e-10)
    expect("INT8 size / FP32 size", measured=0.27, expected=0.3, op="<=")

which prints `PASS  [live] INT8 size / FP32 size: expected <= 0.3, measured 0.27` and raises `ClaimFailed` (an
AssertionError) when the claim does not hold, so the notebook (and CI running it) fails instead of printing a
false sentence.

Every line says where its numbers come from: `[live]` (measured in this run, the default) or
`[committed: attention_h100.json]` for a claim read from a committed result file, which a learner's run cannot
change (`expect_committed(..., file="attention_h100.json")`, or `expect(..., source="committed")`).
Foundation layer: imports nothing from labkit.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq,
        "!=": operator.ne}


SOURCES = ("live", "committed")
"""Where a claim's numbers come from: measured in this run, or read from a committed result file."""


class ClaimFailed(AssertionError):
    """A claim made in a lesson did not hold on the measured numbers."""


@dataclass
class Check:
    """One checked claim: what was expected, what was measured, and whether it held."""

    name: str
    expected: str
    measured: str
    passed: bool
    source: str = "live"
    file: str | None = None

    @property
    def label(self) -> str:
        """`[live]`, or `[committed: <file>]` for a claim read from a committed result file."""
        if self.source == "live":
            return "[live]"
        return f"[committed: {self.file}]" if self.file else "[committed file]"

    def __str__(self) -> str:
        return (f"{'PASS' if self.passed else 'FAIL'}  {self.label} {self.name}: expected {self.expected}, "
                f"measured {self.measured}")


LOG: list[Check] = []
"""Every check made in this process, in order (`table()` shows them)."""


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (int, float, bool))


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    if isinstance(x, (list, tuple, set)) and len(x) > 4:
        items = list(x)
        return f"{len(items)} items [{', '.join(map(str, items[:2]))}, ..., {items[-1]}]"
    return str(x)


def _max_abs_diff(a: Any, b: Any) -> float:
    import torch

    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    if a.shape != b.shape:
        raise ClaimFailed(f"shapes differ: measured {tuple(a.shape)} against expected {tuple(b.shape)}")
    return float((a - b).abs().max()) if a.numel() else 0.0


def expect(name: str, measured: Any, expected: Any = True, tol: float | None = None, *, op: str | None = None,
           quiet: bool = False, source: str = "live", file: str | None = None) -> Check:
    """Check one claim, print its expected-vs-measured line, raise `ClaimFailed` if it is false.

    measured/expected tensors (or arrays):  max |measured - expected| <= tol (tol defaults to 0)
    numbers with `tol`:                     |measured - expected| <= tol
    `op` ("<=", ">=", "<", ">", "==", "!="): measured op expected, e.g. a ratio against a limit
    anything else:                          measured == expected (bools, counts, lists of layer names)
    `source`: "live" (measured in this run) or "committed" (read from a committed result file, named by `file`);
    the printed line starts with it. Returns the `Check` (also appended to `LOG`).
    """
    if op is not None and op not in _OPS:
        raise ValueError(f"op={op!r} is not a comparison; use one of {', '.join(_OPS)}")
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: use 'live' (measured in this run) or 'committed' (read from a "
                         "committed result file; expect_committed does this)")
    if _is_tensor(measured) or _is_tensor(expected):
        diff = _max_abs_diff(measured, expected)
        limit = 0.0 if tol is None else tol
        check = Check(name, f"max |difference| <= {_fmt(limit)}", f"max |difference| = {_fmt(diff)}",
                      bool(diff <= limit))
    elif op is not None:
        ok = bool(_OPS[op](measured, expected))
        if tol is not None:
            raise ValueError("give either op= or tol=, not both")
        check = Check(name, f"{op} {_fmt(expected)}", _fmt(measured), ok)
    elif tol is not None:
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            ok = False
        else:
            ok = abs(measured - expected) <= tol
        check = Check(name, f"{_fmt(expected)} ± {_fmt(tol)}", _fmt(measured), bool(ok))
    else:
        check = Check(name, _fmt(expected), _fmt(measured), bool(measured == expected))
    check.source, check.file = source, file
    LOG.append(check)
    if not quiet:
        print(check)
    if not check.passed:
        raise ClaimFailed(str(check))
    return check


def expect_committed(name: str, measured: Any, expected: Any = True, tol: float | None = None, *,
                     op: str | None = None, file: str | None = None, quiet: bool = False) -> Check:
    """`expect` for a claim read from a committed result file (`file`, e.g. "fast8bit_h100.json"): the line says
    so, because nothing the learner runs here can make it fail."""
    return expect(name, measured, expected, tol, op=op, quiet=quiet, source="committed", file=file)


def table(checks: list[Check] | None = None):
    """The checks made so far (or `checks`) as a pandas DataFrame: claim, source, expected, measured, result."""
    import pandas as pd

    rows = [{"claim": c.name, "source": c.label.strip("[]"), "expected": c.expected, "measured": c.measured,
             "result": "PASS" if c.passed else "FAIL"} for c in (LOG if checks is None else checks)]
    return pd.DataFrame(rows, columns=["claim", "source", "expected", "measured", "result"])


__all__ = ["LOG", "SOURCES", "Check", "ClaimFailed", "expect", "expect_committed", "table"]
