"""labkit.checks.expect: a true claim prints PASS, a false one raises, for tensors, limits and equalities."""

from __future__ import annotations

import pytest
import torch

from labkit.checks import ClaimFailed, expect, expect_committed, table


def test_tensors_within_tolerance_pass_and_outside_fail(capsys):
    a = torch.zeros(3)
    check = expect("same", a + 1e-9, a, tol=1e-6)
    assert check.passed and "PASS  [live] same" in capsys.readouterr().out
    with pytest.raises(ClaimFailed, match=r"FAIL  \[live\] off"):
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


def test_each_line_says_whether_it_is_live_or_read_from_a_committed_file(capsys):
    expect("measured here", 1, 1)
    expect_committed("from the file", 0.5, 1.0, op="<", file="fast8bit_h100.json")
    expect("also from a file", True, source="committed")
    out = capsys.readouterr().out.splitlines()
    assert out == ["PASS  [live] measured here: expected 1, measured 1",
                   "PASS  [committed: fast8bit_h100.json] from the file: expected < 1, measured 0.5",
                   "PASS  [committed file] also from a file: expected True, measured True"]
    with pytest.raises(ClaimFailed, match=r"FAIL  \[committed: a.json\] wrong"):
        expect_committed("wrong", 2, 1, file="a.json")
    assert list(table()["source"].iloc[-4:]) == ["live", "committed: fast8bit_h100.json", "committed file",
                                                 "committed: a.json"]
    with pytest.raises(ValueError, match="source='file'"):
        expect("bad source", 1, 1, source="file")
