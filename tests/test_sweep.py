"""The sweep: OOM is a recorded point, the sweep goes on, and every point is on disk as soon as it is done."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import simulate_eager_oom
from labkit.attention import sweep as sweep_mod
from labkit.attention.sweep import ModelSpec, measure_prefill, run_point_subprocess, sweep
from labkit.measure import prefill as prefill_mod
from labkit.results import read_jsonl
from labkit.models import build_from_shape


@pytest.fixture(scope="module")
def tiny():
    return build_from_shape("tiny-llama", dtype=torch.float32, device="cpu")


@pytest.fixture
def fake_oom(monkeypatch):
    """eager runs out of memory from 64 tokens on (other backends run for real)."""
    simulate_eager_oom(monkeypatch, from_len=64)


def test_measure_prefill_in_process(tiny):
    point = measure_prefill(tiny, 32, "sdpa", warmup=1, repeat=2)
    assert point.ok and not point.oom and point.backend == "sdpa"
    assert point.latency_ms > 0 and point.repeats == 2 and point.tokens_per_s > 0
    assert point.memory_kind in ("cpu_peak_rss", "cpu_peak_rss_since_start") and point.peak_gib > 0


def test_oom_is_a_point_and_the_sweep_goes_on(tiny, fake_oom, tmp_path):
    out = tmp_path / "points.jsonl"
    on_disk = []
    rows = sweep(tiny, ["eager", "sdpa", "fa2"], [16, 32, 64, 128], out=out, progress=False,
                 on_point=lambda row: on_disk.append(len(read_jsonl(out))))
    assert on_disk == list(range(1, 13))  # appended one by one, as each point finished
    by = {(r["backend"], r["seq_len"]): r for r in rows}
    assert by[("eager", 32)]["ok"] and by[("eager", 32)]["latency_ms"] > 0
    oom = by[("eager", 64)]
    assert oom["oom"] and not oom["ok"] and "out of memory" in oom["error"] and oom["peak_gib"] is None
    assert by[("eager", 128)]["skipped"] and "out of memory at N=64" in by[("eager", 128)]["error"]
    assert all(by[("sdpa", n)]["ok"] for n in (16, 32, 64, 128))  # the sweep went on after the OOM
    assert all(by[("fa2", n)]["skipped"] and "unavailable" in by[("fa2", n)]["error"] for n in (16, 128)) \
        or torch.cuda.is_available()
    assert read_jsonl(out) == rows


def test_other_errors_are_recorded_too(tiny, monkeypatch):
    monkeypatch.setattr(prefill_mod, "prefill_callable", lambda m, ids: (lambda: 1 / 0))
    point = measure_prefill(tiny, 16, "sdpa")
    assert not point.ok and not point.oom and point.error.startswith("ZeroDivisionError")


def test_interrupted_sweep_keeps_what_it_measured(tiny, tmp_path):
    out = tmp_path / "points.jsonl"

    def stop_after_two(row):
        if len(read_jsonl(out)) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(tiny, ["sdpa"], [8, 16, 32, 64], out=out, progress=False, on_point=stop_after_two)
    rows = read_jsonl(out)
    assert [r["seq_len"] for r in rows] == [8, 16] and all(r["ok"] for r in rows)
    with out.open("a") as fh:  # a half-written last line (killed mid-write) is ignored
        fh.write('{"backend": "sd')
    assert len(read_jsonl(out)) == 2


def test_cpu_budget_skips_points_the_model_predicts_too_big(tmp_path):
    rows = sweep(ModelSpec("llama-2-7b"), ["sdpa"], [1024], device="cpu", progress=False, cpu_budget_gib=1.0)
    assert rows[0]["skipped"] and "memory model predicts" in rows[0]["error"]


def test_isolation_is_refused_on_a_built_model(tiny):
    with pytest.raises(ValueError, match="subprocess"):
        sweep(tiny, ["sdpa"], [8], isolate=True, progress=False)


@pytest.mark.slow
def test_subprocess_point_reports_cpu_peak_rss():
    point = run_point_subprocess(ModelSpec("tiny-llama"), "eager", 64, warmup=1, repeat=2)
    assert point.ok, point.error
    assert point.memory_kind == "cpu_peak_rss" and point.device == "cpu"
    assert 0 < point.baseline_gib <= point.peak_gib < 8


def test_subprocess_failure_is_a_point(monkeypatch):
    point = run_point_subprocess(ModelSpec("no-such-shape"), "sdpa", 16)
    assert not point.ok and "building the model failed" in point.error and "no-such-shape" in point.error


def test_attention_command_quick_writes_a_result_file(tmp_path, monkeypatch):
    """The CLI's code path on a CPU, kept tiny: every row has the contract's fields."""
    from labkit.bench import main
    from labkit.experiments.attention import SWEEP_ORDER

    monkeypatch.setattr(sweep_mod, "run_point_subprocess",
                        lambda spec, b, n, bs=1, **kw: measure_prefill(spec.build("cpu", b), n, None, bs, 1, 1))
    out = tmp_path / "attention_cpu.json"
    seen = []
    import labkit.results.run as run_mod

    real_append = run_mod.append_jsonl
    monkeypatch.setattr(run_mod, "append_jsonl", lambda path, row: (real_append(path, row),
                                                                    seen.append(len(read_jsonl(path)))))
    assert main(["attention", "--profile", "quick", "--out", str(out), "--seq-lens", "16,32", "--no-kernels"]) == 0
    assert seen == list(range(1, 2 * len(SWEEP_ORDER) + 1))  # every backend x 2 lengths, on disk one by one
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and data["provenance"]["versions"]["torch"]
    assert {"backend", "seq_len", "latency_ms", "peak_gib", "oom"} <= set(data["rows"][0])
    assert {r["backend"] for r in data["rows"]} >= {"eager", "sdpa", "fa2", "triton-fa2", "cudnn", "flash-attn"}
    assert data["memory_model"]["curves"]["seq_len"][0] == 16
    assert [r["seq_len"] for r in read_jsonl(out.with_suffix(".jsonl"))] == [r["seq_len"] for r in data["rows"]]


def _row(backend, n, ok=True, oom=False, latency=None, peak=None):
    return dict(backend=backend, seq_len=n, ok=ok, oom=oom, skipped=False, latency_ms=latency, peak_gib=peak)


def test_targets_on_a_synthetic_result():
    from labkit.experiments.attention import targets

    result = {"rows": [
        _row("eager", 8192, latency=1000, peak=30), _row("eager", 16384, ok=False, oom=True),
        _row("fa2", 8192, latency=200, peak=13.5), _row("fa2", 32768, latency=1500, peak=15),
        _row("sdpa", 32768, ok=False, oom=True),
    ], "kernels": {"plain_script_check": [dict(seq_len=4096, harness_tflops=330, plain_tflops=340, ratio=330 / 340)]}}
    checks = {c["target"]: c["met"] for c in targets(result)}
    assert checks["eager runs out of memory at or before 16k tokens"] is True
    assert checks["at 8k, fa2 at least 4x faster than eager"] is True
    assert checks["at 8k, fa2 peak memory at most half of eager's"] is True
    assert checks["fa2 reaches 32k tokens"] is True and checks["sdpa reaches 32k tokens"] is False
    assert checks["kernel benchmark fa2 within 10% of a plain script"] is True
    assert all(c["verdict"] == "not measured" for c in targets({"rows": []}))


def test_load_reference_ignores_cpu_files_and_explains_absence(tmp_path):
    from labkit.results import load_reference, write_json

    data, message = load_reference("attention", gpu_only=True, directory=tmp_path)
    assert data is None and "--profile full" in message
    write_json(tmp_path / "attention_cpu.json", {"provenance": {"device": "cpu"}, "config": {"profile": "full"},
                                                 "rows": []})
    assert load_reference("attention", gpu_only=True, directory=tmp_path)[0] is None
    write_json(tmp_path / "attention_a100.json", {"provenance": {"device": "cuda", "date": "y"},
                                                   "config": {"profile": "quick"}, "rows": [2]})
    write_json(tmp_path / "attention_h100.json", {"provenance": {"device": "cuda", "date": "x"},
                                                   "config": {"profile": "full"}, "rows": [1]})
    data, message = load_reference("attention", gpu_only=True, directory=tmp_path)
    assert data["rows"] == [1] and "attention_h100.json" in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.gpu
def test_gpu_point_uses_cuda_peak_statistics():
    model = build_from_shape("tiny-llama", dtype=torch.bfloat16, device="cuda")
    point = measure_prefill(model, 256, "fa2", warmup=1, repeat=3)
    assert point.ok and point.memory_kind == "cuda_max_allocated"
    assert point.baseline_gib <= point.peak_gib < 1


def test_summary_rows_compare_with_eager_and_the_memory_model():
    from labkit.attention.memory_model import ModelShape
    from labkit.experiments.attention import summary_rows

    shape = ModelShape.named("tiny-llama")
    result = {"memory_model": {"shape": shape.as_dict(), "dtype": "float32"},
              "rows": [_row("eager", 64, latency=40, peak=0.5), _row("sdpa", 64, latency=10, peak=0.4),
                       _row("eager", 128, ok=False, oom=True)]}
    rows = {r["backend"]: r for r in summary_rows(result)}
    assert rows["sdpa"]["speedup_vs_eager"] == 4 and rows["eager"]["speedup_vs_eager"] == 1
    assert rows["eager"]["model_peak_gib"] > rows["sdpa"]["model_peak_gib"] > 0
    assert len(rows) == 2
