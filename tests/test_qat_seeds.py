"""Notebook 01 over seeds: the full profile's budget, seeds, verdicts over seeds, the matmul evidence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labkit.experiments.qat_bert import targets
from labkit.experiments.qat_bert.bench import matmul_checks
from labkit.experiments.qat_bert.pipeline import QATBertConfig, run_qat_bert


def target_checks(rows, runs=None, n_eval=None):
    """The targets of a result holding these rows (and these seeds' rows)."""
    return targets({"rows": rows, "seed_rows": dict(enumerate(runs or [])), "config": {"n_eval_actual": n_eval}})


def test_full_profile_trains_to_convergence_over_three_seeds():
    cfg = QATBertConfig.for_profile("full")
    assert cfg.n_train is None and cfg.n_eval is None and cfg.seeds == (0, 1, 2) and cfg.train_device == "auto"
    assert cfg.steps_for(67349) == (6315, 2105)  # 3 epochs of batch 32, then 1 more for QAT and FP32 + extra
    assert QATBertConfig.for_profile("full", fp32_steps=100).steps_for(67349) == (100, 2105)  # explicit steps win
    assert QATBertConfig.for_profile("quick").steps_for(10**6) == (40, 16)  # quick: steps as configured
    with pytest.raises(ValueError, match="train_device"):
        QATBertConfig.for_profile("quick", train_device="tpu").validate()
    with pytest.raises(ValueError, match="seeds"):
        QATBertConfig.for_profile("quick", seeds=()).validate()


def _rows(fp32x: float, qat: float, lat=(10.0, 10.0, 10.0), base=(30.0, 30.0, 30.0)) -> list[dict]:
    def row(v, acc, t):
        return {"variant": v, "accuracy": acc, "f1": acc, "size_mb": 90.0 if v.startswith("fp32") else 25.0,
                "latency_ms_b8": t[1], "latency_ms_b8_p10": t[0], "latency_ms_b8_p90": t[2]}
    return [row("fp32", fp32x, base), row("fp32-extra", fp32x, base), row("qat", qat, lat)]


def test_one_seed_gives_no_accuracy_verdict():
    """The committed case: QAT 86.70 vs 86.58 on one seed was called 'met'."""
    acc = target_checks(_rows(0.8658, 0.8670), n_eval=872)[0]
    assert acc["verdict"] == "no verdict" and acc["met"] is None


def test_seeds_decide_and_noise_is_said():
    runs = [_rows(0.90, 0.905), _rows(0.91, 0.905), _rows(0.90, 0.898)]  # QAT - FP32: +0.5, -0.5, -0.2 points
    acc = target_checks(runs[0], runs, n_eval=872)[0]
    assert acc["seeds"] == 3 and acc["verdict"] == "within noise" and acc["met"] is None
    clear = [_rows(0.900, 0.899), _rows(0.910, 0.909), _rows(0.905, 0.9045)]  # -0.1, -0.1, -0.05: sd tiny
    acc = target_checks(clear[0], clear, n_eval=None)[0]
    assert acc["verdict"] == "met" and acc["met"] is True
    lat = target_checks(runs[0], runs)[1]
    assert lat["verdict"] == "met" and "spread" in lat["measured"]  # 10 / 30 ms: 0.33x, far from 0.5
    noisy = target_checks(_rows(0.9, 0.9, lat=(12, 15, 18), base=(28, 30, 32)))[1]
    assert noisy["verdict"] == "within noise" and noisy["met"] is None


def _data_dir() -> Path:
    for c in (os.environ.get("LABKIT_DATA_DIR"), str(Path(__file__).resolve().parents[2] / "shared" / "data")):
        if c and (Path(c) / "sst2" / "dev.tsv").exists():
            return Path(c)
    pytest.skip("the lab's dataset copies are not here (set LABKIT_DATA_DIR)")


@pytest.mark.slow
def test_tiny_run_has_matmul_evidence_for_every_variant():
    cfg = QATBertConfig.for_profile(
        "quick", n_train=16, n_eval=16, batch_size=8, fp32_epochs=1.0, extra_steps=1, calibration_batches=1,
        latency_batch_sizes=(1, 2), latency_seq_len=16, latency_rounds=1, latency_repeat=1, latency_warmup=1,
        compile=False, data_dir=str(_data_dir()))
    first = run_qat_bert(cfg, progress=False)
    assert first.config["fp32_steps"] == 2 and first.config["seed"] == 0  # 1 epoch of 16 rows in batches of 8
    checks = {(c["variant"], c["mode"]): c for c in matmul_checks(first.rows)}
    assert {v for v, _ in checks} == {"fp32", "fp32-extra", "ptq-dynamic", "ptq-static", "qat"}
    assert all(c["ok"] for c in checks.values()), [c["evidence"] for c in checks.values() if not c["ok"]]
    assert "integer matmul" in checks[("qat", "eager")]["evidence"]
    assert target_checks(first.rows, [first.rows], 16)[0]["verdict"] == "no verdict"


def test_bench_runs_seeds_resumes_and_fails_on_a_float_fallback(tmp_path, monkeypatch, capsys):
    """`python -m labkit.bench qat`: each seed appended to <out>.jsonl; --resume skips finished seeds; an INT8
    variant whose profile shows no integer matmul makes the run fail (exit 1, reason printed)."""
    import json

    import labkit.experiments.qat_bert.bench as bench
    from labkit.bench import main
    from labkit.experiments.qat_bert.pipeline import QATBertResult

    calls = []

    def fake_run(cfg, on_stage=None, **kw):
        calls.append(cfg.seed)
        rows = _rows(0.90, 0.90 - 0.001 * cfg.seed)
        rows[2].update(matmul_eager_ok=cfg.seed != 99, matmul_eager="stub evidence")
        return QATBertResult(config={"seed": cfg.seed, "n_eval_actual": 872}, rows=rows)

    monkeypatch.setattr(bench, "run_qat_bert", fake_run)
    out = tmp_path / "qat.json"
    base = ["qat", "--profile", "quick", "--out", str(out), "--no-compile"]
    assert main(base + ["--seeds", "0,1"]) == 0 and calls == [0, 1]
    seeds_recorded = [json.loads(x)["seed"] for x in out.with_suffix(".jsonl").read_text().splitlines()
                      if json.loads(x)["record"] == "seed"]
    assert seeds_recorded == [0, 1]
    assert main(base + ["--seeds", "0,1,2", "--resume"]) == 0 and calls == [0, 1, 2]  # only seed 2 ran again
    data = json.loads(out.read_text())
    assert data["seeds"] == [0, 1, 2] and data["targets"][0]["seeds"] == 3 and data["status"] == "complete"
    assert data["seed_summary"][2]["variant"] == "qat" and data["seed_summary"][2]["n_seeds"] == 3
    assert data["provenance"]["profile"] == "quick"
    other = tmp_path / "qat99.json"
    assert main(["qat", "--profile", "quick", "--out", str(other), "--no-compile", "--seeds", "99"]) == 1
    assert "integer kernel check" in capsys.readouterr().out  # the INT8 variant ran no integer kernel
    data = json.loads(other.read_text())
    assert data["status"] == "failed" and "integer kernel check" in data["reason"]
