"""Notebook 01's pipeline end to end on the embedded BERT with a tiny budget, its bad inputs, the bench JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labkit.models import UnknownModelError
from labkit.experiments.qat_bert import VARIANTS, QATBertConfig, results_frame, run_qat_bert, targets


def tiny_config(data_dir, **kw) -> QATBertConfig:
    return QATBertConfig.for_profile(
        "quick", n_train=32, n_eval=32, batch_size=8, fp32_steps=2, extra_steps=2, calibration_batches=2,
        latency_rounds=1, latency_repeat=1, latency_warmup=1, compile=False, data_dir=str(data_dir), **kw,
    )


def _data_dir() -> Path:
    """The lab's dataset copies, as conftest's `shared_data_dir` finds them (module scope needs its own)."""
    for c in (os.environ.get("LABKIT_DATA_DIR"), str(Path(__file__).resolve().parents[2] / "shared" / "data")):
        if c and (Path(c) / "sst2" / "dev.tsv").exists():
            return Path(c)
    pytest.skip("the lab's dataset copies are not here (set LABKIT_DATA_DIR)")


@pytest.fixture(scope="module")
def result():
    return run_qat_bert(tiny_config(_data_dir()), progress=False)


@pytest.mark.slow
def test_pipeline_produces_every_variant(result):
    rows = {r["variant"]: r for r in result.rows}
    assert list(rows) == list(VARIANTS)
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["f1"] <= 1 and r["size_mb"] > 0
        assert r["latency_ms_b1"] > 0 and r["latency_ms_b8"] > 0
        assert r["latency_ms_b8_compiled"] is None  # compile=False in this test
    assert rows["fp32"]["int8_modules"] == rows["fp32-extra"]["int8_modules"] == 0
    # 6 layers x 6 Linears + pooler = 37 Linears, plus 3 embedding tables; the classifier head stays FP32
    for v in ("ptq-dynamic", "ptq-static", "qat"):
        assert rows[v]["int8_modules"] == 40, v
        assert "classifier" not in result.int8_modules[v]
        assert rows[v]["size_mb"] < 0.3 * rows["fp32"]["size_mb"], "INT8 size must count every weight"
    assert rows["fp32-extra"]["train_steps"] == rows["qat"]["train_steps"] == 4, "same budget for the reference"
    assert result.round_trip["same_predictions"] and result.round_trip["max_abs_diff"] == 0.0
    checks = targets({"rows": result.rows})
    assert len(checks) == 4 and checks[2]["met"] is None  # compiled latency: not measured here
    assert list(results_frame(result.rows).index)[-1] == "QAT INT8"


@pytest.mark.slow
def test_bench_writes_reference_json(result, tmp_path, monkeypatch):
    import labkit.experiments.qat_bert.bench as bench
    from labkit.bench import main

    monkeypatch.setattr(bench, "run_qat_bert", lambda cfg, **kw: result)
    out = tmp_path / "qat_bert_cpu.json"
    assert main(["qat", "--profile", "quick", "--out", str(out), "--no-compile"]) == 0
    data = json.loads(out.read_text())
    assert data["status"] == "complete"
    assert {"device", "cpu", "threads", "versions", "date", "command"} <= set(data["provenance"])
    assert [r["variant"] for r in data["rows"]] == list(VARIANTS)
    for r in data["rows"]:
        assert {"accuracy", "f1", "size_mb", "latency_ms_b1", "latency_ms_b8"} <= set(r)


def test_bad_inputs_fail_early_and_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*sst2, imdb"):
        run_qat_bert(tiny_config(tmp_path, dataset="mnist"), progress=False)
    with pytest.raises(UnknownModelError, match="no-such-bert"):
        run_qat_bert(tiny_config(tmp_path, model="no-such-bert"), progress=False)
    with pytest.raises(ValueError, match="profile"):
        QATBertConfig.for_profile("huge")
    with pytest.raises(ValueError, match="compile_variants"):
        tiny_config(tmp_path, compile_variants=("fp16",)).validate()


@pytest.mark.slow
def test_layer_filter_matching_nothing_is_an_error(shared_data_dir):
    from labkit.quant import EmptySelectionError

    with pytest.raises(EmptySelectionError, match="matches no"):
        run_qat_bert(tiny_config(shared_data_dir, layers=r"^transformer\.h\."), progress=False)


def test_compile_settings_are_scoped_and_allow_every_variant():
    """Compiled latency runs under freezing with a recompile limit that fits every variant x batch size;
    both settings are restored afterwards (they are process-wide)."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    from labkit.experiments.qat_bert import compile_settings

    before = (inductor_config.freezing, dynamo_config.recompile_limit)
    with compile_settings():
        assert inductor_config.freezing
        assert dynamo_config.recompile_limit >= 2 * len(VARIANTS)
    assert (inductor_config.freezing, dynamo_config.recompile_limit) == before
