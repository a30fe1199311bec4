"""Verdicts no finer than the noise (labkit/measure/stats.py), on the cases a single-seed verdict got wrong."""

from __future__ import annotations

import math

import pytest

from labkit.measure.stats import binomial_se, format_spread, spread, verdict, verdict_text


def test_spread_and_format():
    s = spread([1.0, 2.0, 3.0])
    assert (s.mean, s.sd, s.n) == (2.0, 1.0, 3)
    assert format_spread(s) == "2.00 +- 1.00 (n=3)"
    assert format_spread(spread([5.0])) == "5.00 (n=1, no spread)"
    with pytest.raises(ValueError):
        spread([])
    with pytest.raises(ValueError):
        spread([1.0, math.nan])


def test_one_seed_is_never_met_or_missed():
    """QAT BERT 'met' at 86.70 vs 86.58 from one run: one seed gives no verdict."""
    v = verdict([86.70 - 86.58], -0.3, at_least=True)
    assert v["verdict"] == "no verdict" and v["met"] is None


def test_difference_smaller_than_the_spread_is_within_noise():
    # hybrid: QAT 14.559 vs 14.564 "met" / 14.407 vs 14.400 "missed" (target: QAT ppl below PTQ ppl);
    # per-seed differences PTQ - QAT that straddle zero by less than their spread
    v = verdict([0.005, -0.007, 0.011], 0.0, at_least=True)
    assert v["verdict"] == "within noise" and v["met"] is None
    # accuracy gap within 0.3 points, but seeds spread by ~1 point (one sentence of 872 = 0.11 points)
    v = verdict([-0.1, -1.2, 0.9], -0.3, at_least=True, resolution=100 / 872)
    assert v["verdict"] == "within noise"


def test_clear_margins_are_met_or_missed():
    assert verdict([1.0, 1.1, 0.9], 0.0, at_least=True)["verdict"] == "met"
    assert verdict([-1.0, -1.1, -0.9], 0.0, at_least=True)["verdict"] == "missed"
    # "at most": ratios of 0.31 +- 0.01 against <= 0.5 are met, 0.7 +- 0.01 missed
    assert verdict([0.30, 0.31, 0.32], 0.5, at_least=False)["met"] is True
    assert verdict([0.69, 0.70, 0.71], 0.5, at_least=False)["met"] is False


def test_resolution_is_a_floor_on_the_noise():
    same = [0.2, 0.2, 0.2]  # sd 0: identical seeds, but the eval set cannot resolve 0.2 points
    assert verdict(same, 0.0, at_least=True)["verdict"] == "met"
    assert verdict(same, 0.0, at_least=True, resolution=0.5)["verdict"] == "within noise"


def test_verdict_text_and_binomial_se():
    v = verdict([0.1, 0.5, -0.2], -0.3, at_least=True)
    assert verdict_text(v) == f"met: {format_spread(spread([0.1, 0.5, -0.2]))} against >= -0.30"
    assert verdict_text(verdict([0.3], 0.5, at_least=False)).startswith("no verdict (fewer than 3 seeds)")
    assert binomial_se(0.87, 872) * 100 == pytest.approx(1.14, abs=0.01)
    with pytest.raises(ValueError):
        binomial_se(1.2, 10)


def test_non_monotone_flags_drops_and_says_if_they_are_clear():
    from labkit.measure.stats import non_monotone

    rows = [
        {"backend": "fa2", "seq_len": 512, "latency_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1},
        {"backend": "fa2", "seq_len": 1024, "latency_ms": 0.95, "p10_ms": 0.9, "p90_ms": 1.2},  # inside the spread
        {"backend": "fa2", "seq_len": 2048, "latency_ms": 3.0, "p10_ms": 2.9, "p90_ms": 3.1},
        {"backend": "fa2", "seq_len": 4096, "latency_ms": 2.0, "p10_ms": 1.9, "p90_ms": 2.1},  # clear drop
        {"backend": "eager", "seq_len": 4096, "latency_ms": None, "oom": True},  # not measured: ignored
        {"backend": "eager", "seq_len": 512, "latency_ms": 2.0},
        {"backend": "eager", "seq_len": 1024, "latency_ms": 4.0},
    ]
    flags = non_monotone(rows)
    assert [(f["seq_len_from"], f["seq_len_to"], f["clear"]) for f in flags] == [(512, 1024, False), (2048, 4096, True)]
    assert non_monotone(rows[5:]) == []


def test_seed_helpers():
    from labkit.measure.stats import paired_differences, per_seed, seed_summary

    runs = [
        [{"variant": "fp32", "accuracy": 0.90}, {"variant": "qat", "accuracy": 0.89}],
        [{"variant": "fp32", "accuracy": 0.92}, {"variant": "qat", "accuracy": 0.92}],
        [{"variant": "fp32", "accuracy": 0.91}, {"variant": "qat", "error": "failed"}],
    ]
    assert per_seed(runs, "qat", "accuracy") == [0.89, 0.92]
    assert paired_differences(runs, "qat", "fp32", "accuracy", scale=100) == pytest.approx([-1.0, 0.0])
    table = seed_summary(runs, ["accuracy"])
    assert table[0]["variant"] == "fp32" and table[0]["n_seeds"] == 3
    assert table[0]["accuracy_mean"] == pytest.approx(0.91) and table[0]["accuracy_sd"] == pytest.approx(0.01)
    assert table[1]["n_seeds"] == 2


def test_ratio_verdict():
    from labkit.measure.stats import ratio_verdict

    assert ratio_verdict((9, 10, 11), (29, 30, 31), 0.5)["verdict"] == "met"  # 0.33, spread 0.29..0.38
    assert ratio_verdict((19, 20, 21), (29, 30, 31), 0.5)["verdict"] == "missed"  # 0.67
    v = ratio_verdict((13, 15, 17), (28, 30, 32), 0.5)  # 0.5 exactly, spread 0.41..0.61
    assert v["verdict"] == "within noise" and v["met"] is None
    with pytest.raises(ValueError):
        ratio_verdict((0, 1, 2), (1, 2, 3), 0.5)


def test_a_target_is_one_of_the_verdicts_and_met_follows_from_it():
    from labkit.measure.stats import Target, verdict

    t = Target.judged("x", "y", verdict([1.0, 1.1, 0.9], 0.5, at_least=True), seeds=3)
    assert t.verdict == "met" and t.met is True and t["met"] is True and t["seeds"] == 3
    assert t.as_dict()["value"] == pytest.approx(1.0) and t.as_dict()["limit"] == 0.5
    assert [Target("x", "y", v).met for v in ("missed", "within noise", "no verdict")] == [False, None, None]
    assert Target.not_measured("x")["verdict"] == "not measured" and Target.exact("x", "y", False).met is False
    with pytest.raises(ValueError, match="verdict 'passed' of 'x': use one of met, missed"):
        Target("x", "y", "passed")
