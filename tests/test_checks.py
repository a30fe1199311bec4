"""labkit.checks.expect: a true claim prints PASS, a false one raises, for tensors, limits and equalities."""

from __future__ import annotations

import pytest
import torch

from labkit.checks import ClaimFailed, expect, table


def test_tensors_within_tolerance_pass_and_outside_fail(capsys):
    a = torch.zeros(3)
    check = expect("same", a + 1e-9, a, tol=1e-6)
    assert check.passed and "PASS  same" in capsys.readouterr().out
    with pytest.raises(ClaimFailed, match="FAIL  off"):
        expect("off", a + 1e-3, a, tol=1e-6)
    with pytest.raises(AssertionError):  # ClaimFailed is an AssertionError: pytest and nbmake report it as one
        expect("shape", torch.zeros(2), torch.zeros(3), tol=1.0)


def test_limits_and_tolerances():
    expect("ratio", 0.27, 0.3, op="<=")
    with pytest.raises(ClaimFailed, match=r"expected <= 0.3, measured 0.31"):
        expect("ratio", 0.31, 0.3, op="<=")
    expect("close", 1.04, 1.0, tol=0.05)
    with pytest.raises(ClaimFailed):
        expect("far", 1.2, 1.0, tol=0.05)
    with pytest.raises(ClaimFailed):
        expect("nan", float("nan"), 1.0, tol=0.05)
    with pytest.raises(ValueError, match="op="):
        expect("bad op", 1, 2, op="=<")


def test_equality_and_table():
    expect("layers", ["a", "b"], ["a", "b"])
    with pytest.raises(ClaimFailed):
        expect("flag", False)
    df = table()
    assert {"claim", "expected", "measured", "result"} <= set(df.columns)
    assert df["result"].iloc[-1] == "FAIL"
