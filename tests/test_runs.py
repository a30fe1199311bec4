"""Benchmark runs are safe and honest: a run folder by default (never a committed reference), each measurement
appended as it happens, --resume, non-zero exit and a `failed` / `interrupted` status when the run did not do
what was asked, and every argument checked before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.bench import main
from labkit.results import read_jsonl, reference_dir

REFERENCES = sorted(reference_dir().glob("*.json"))


def _snapshot() -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in REFERENCES}


def _only_run(tmp_path: Path, experiment: str) -> Path:
    found = sorted((tmp_path / "runs").glob(f"{experiment}_*/result.json"))
    assert len(found) == 1, found
    return found[0]


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# 1. a mistyped model, a default --out: never a committed reference


def test_mistyped_model_is_refused_before_anything_is_written(in_tmp, capsys, monkeypatch):
    import labkit.experiments.hybrid.bench as bench

    monkeypatch.setattr(bench, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    before = _snapshot()
    err = _usage_error(capsys, ["hybrid", "--model", "nope/nope", "--profile", "quick"])
    assert "--model 'nope/nope'" in err and "smollm2-135m" in err
    assert _snapshot() == before and not (in_tmp / "runs").exists()


def _fake_qat_result():
    from labkit.experiments.qat_bert import VARIANTS, QATBertResult

    rows = [{"variant": v, "label": v, "accuracy": 0.8, "f1": 0.8, "size_mb": 90.0 if v.startswith("fp32") else 25.0,
             "latency_ms_b1": 5.0, "latency_ms_b8": 20.0, "latency_ms_b8_compiled": None} for v in VARIANTS]
    return QATBertResult(config={"profile": "quick"}, rows=rows, round_trip={"same_predictions": True})


def test_qat_without_out_writes_a_run_folder_not_the_reference(in_tmp, monkeypatch):
    import labkit.experiments.qat_bert.bench as bench

    def fake(cfg, on_stage=None, **kw):
        on_stage("fine-tune FP32", 1.0)
        return _fake_qat_result()

    monkeypatch.setattr(bench, "run_qat_bert", fake)
    before = _snapshot()
    assert main(["qat", "--profile", "quick"]) == 0
    assert _snapshot() == before
    out = _only_run(in_tmp, "qat_bert")
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and len(data["rows"]) == 5
    kinds = [r["record"] for r in read_jsonl(out.with_suffix(".jsonl"))]
    assert kinds[0] == "stage" and kinds.count("variant") == 5 and kinds[-1] == "seed"
    assert [t["verdict"] for t in data["targets"]][-1] == "met"  # the targets, judged when the run ended


def test_out_in_the_reference_folder_is_refused(in_tmp, capsys):
    before = _snapshot()
    err = _usage_error(capsys, ["kernels", "--profile", "quick", "--out", str(reference_dir() / "kernels_cpu.json")])
    assert "committed reference folder" in err and "--update-reference" in err
    assert _snapshot() == before


def test_update_reference_needs_a_full_profile(in_tmp, capsys):
    err = _usage_error(capsys, ["kernels", "--profile", "quick", "--update-reference"])
    assert "--update-reference with --profile quick" in err


def _fake_kernels(rows_ok=True, interrupt_after=None):
    calls = []

    def kernel_benchmark(profile, device=None, backends=None, progress=True, on_row=None, previous=()):
        done = {(r["backend"], r["seq_len"]) for r in previous}
        rows = list(previous)
        for backend in ("sdpa", "eager"):
            for n in (8, 16):
                if (backend, n) in done:
                    continue
                if interrupt_after is not None and len(calls) == interrupt_after:
                    raise KeyboardInterrupt
                calls.append((backend, n))
                row = {"backend": backend, "seq_len": n, "ok": rows_ok, "ms": 1.0 if rows_ok else None,
                       "tflops": 1.0 if rows_ok else None, "error": None if rows_ok else "RuntimeError: boom"}
                rows.append(row)
                on_row(row)
        return {"config": {"seq_lens": [8, 16]}, "rows": rows, "plain_script_check": []}

    return kernel_benchmark, calls


def test_update_reference_copies_a_complete_full_run(in_tmp, monkeypatch):
    import labkit.experiments.kernels as kernels

    fake, _ = _fake_kernels()
    monkeypatch.setattr(kernels, "kernel_benchmark", fake)
    assert main(["kernels", "--profile", "full", "--update-reference"]) == 0
    ref = json.loads((in_tmp / "data" / "reference" / "kernels_cpu.json").read_text())
    assert ref["status"] == "complete" and ref["config"]["profile"] == "full" and "files" not in ref


def test_reference_loader_shows_only_complete_full_runs(tmp_path):
    from labkit.results import load_reference, write_json

    write_json(tmp_path / "qat_bert_cpu.json", {"provenance": {"profile": "quick"}, "rows": [1]})
    data, message = load_reference("qat_bert", "cpu", directory=tmp_path)
    assert data is None and "profile is 'quick'" in message
    write_json(tmp_path / "qat_bert_cpu.json", {"provenance": {"profile": "full"}, "status": "interrupted"})
    assert "status is 'interrupted'" in load_reference("qat_bert", "cpu", directory=tmp_path)[1]
    write_json(tmp_path / "qat_bert_cpu.json", {"provenance": {"profile": "full"}, "rows": [1]})
    assert load_reference("qat_bert", "cpu", directory=tmp_path)[0]["rows"] == [1]


def test_reference_of_one_experiment_ignores_another_experiments_file(tmp_path):
    """`hybrid` must not pick up `hybrid_qat_fsdp_h200x2.json`: a device slug has no underscore."""
    from labkit.results import load_reference, reference_devices, write_json

    write_json(tmp_path / "hybrid_h200.json", {"provenance": {"profile": "full"}, "rows": [1]})
    write_json(tmp_path / "hybrid_qat_fsdp_h200x2.json", {"rows": [2]})
    assert reference_devices("hybrid", directory=tmp_path) == ["h200"]
    assert load_reference("hybrid", directory=tmp_path)[0]["rows"] == [1]


# ---------------------------------------------------------------------------------------------------------------
# 2. an interrupted run keeps what it measured, and --resume continues it


def test_interrupted_kernels_run_keeps_its_rows_and_resumes(in_tmp, monkeypatch, capsys):
    import labkit.experiments.kernels as kernels

    out = in_tmp / "k" / "result.json"
    fake, calls = _fake_kernels(interrupt_after=2)
    monkeypatch.setattr(kernels, "kernel_benchmark", fake)
    assert main(["kernels", "--profile", "quick", "--out", str(out)]) == 130
    data = json.loads(out.read_text())
    assert data["status"] == "interrupted" and "--resume" in data["reason"]
    assert len(read_jsonl(out.with_suffix(".jsonl"))) == 2
    # the same --out again is refused (it would lose the partial run) ...
    assert "--resume" in _usage_error(capsys, ["kernels", "--profile", "quick", "--out", str(out)])
    assert len(read_jsonl(out.with_suffix(".jsonl"))) == 2
    # ... and --resume measures only what is missing
    fake, calls = _fake_kernels()
    monkeypatch.setattr(kernels, "kernel_benchmark", fake)
    assert main(["kernels", "--profile", "quick", "--out", str(out), "--resume"]) == 0
    assert calls == [("eager", 8), ("eager", 16)]
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and len(data["rows"]) == 4


def test_interrupted_attention_sweep_resumes_without_measuring_again(in_tmp, monkeypatch):
    import labkit.attention.sweep as sweep_mod
    from labkit.attention.sweep import measure_prefill

    measured = []

    def point(spec, backend, n, batch_size=1, **kw):
        if len(measured) == 3 and not resumed:
            raise KeyboardInterrupt
        measured.append((backend, n))
        return measure_prefill(spec.build("cpu", backend), n, None, batch_size, 1, 1)

    resumed = False
    monkeypatch.setattr(sweep_mod, "run_point_subprocess", point)
    out = in_tmp / "att.json"
    argv = ["attention", "--profile", "quick", "--out", str(out), "--seq-lens", "16,32", "--backends", "eager,sdpa",
            "--no-kernels"]
    assert main(argv) == 130
    assert json.loads(out.read_text())["status"] == "interrupted"
    assert len(read_jsonl(out.with_suffix(".jsonl"))) == 3
    resumed = True
    assert main(argv + ["--resume"]) == 0
    assert measured[3:] == [("sdpa", 32)]
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and len(data["rows"]) == 4 and data["resumed"]["measurements_reused"] == 3


# ---------------------------------------------------------------------------------------------------------------
# 3. failure is reported as failure


def test_hybrid_model_that_cannot_be_loaded_fails_the_run(in_tmp, monkeypatch):
    import labkit.experiments.hybrid.bench as bench

    def broken(*a, **k):
        raise OSError("the embedded model package is broken")

    monkeypatch.setattr(bench, "load_causal_lm", broken)
    assert main(["hybrid", "--profile", "quick", "--shape", "none", "--no-sensitivity"]) == 1
    data = json.loads(_only_run(in_tmp, "hybrid").read_text())
    assert data["status"] == "failed" and "could not be loaded" in data["reason"]


def test_hybrid_run_whose_every_variant_failed_exits_non_zero(in_tmp, monkeypatch):
    import labkit.experiments.hybrid.bench as bench
    from labkit.experiments.hybrid import HybridResult

    monkeypatch.setattr(bench, "load_causal_lm", lambda *a, **k: (object(), object()))

    def every_variant_fails(cfg, model, tokenizer, on_row=None, **kw):
        res = HybridResult(config={}, selected=[])
        for name in cfg.variants:
            res.rows.append({"variant": name, "method": "float", "error": "RuntimeError: boom", "oom": False})
            on_row(res.rows[-1], res)
        return res

    monkeypatch.setattr(bench, "run_hybrid", every_variant_fails)
    assert main(["hybrid", "--profile", "quick", "--shape", "none", "--no-sensitivity"]) == 1
    data = json.loads(_only_run(in_tmp, "hybrid").read_text())
    n = len(bench.HybridConfig.for_profile("quick", "cpu").variants)
    assert data["status"] == "failed" and f"{n} of {n} variants failed" in data["reason"]


# ---------------------------------------------------------------------------------------------------------------
# 4. numbers and patterns are checked before any model loads


@pytest.mark.parametrize("argv, expected", [
    (["attention", "--batch-size", "0"], "argument --batch-size: 0 is not allowed"),
    (["attention", "--batch-size", "-2"], "argument --batch-size: -2 is not allowed"),
    (["attention", "--seq-lens", "0"], "argument --seq-lens: '0': every value must be at least 1"),
    (["attention", "--seq-lens", "abc"], "argument --seq-lens: 'abc' is not a comma-separated list"),
    (["attention", "--backends", "fa3"], "argument --backends: 'fa3': unknown 'fa3'; choose from eager,sdpa"),
    (["hybrid", "--steps", "-3"], "argument --steps: -3 is not allowed"),
    (["hybrid", "--lr", "0"], "argument --lr: 0.0 is not allowed"),
    (["hybrid", "--layers", "no_such_layer"], "--layers 'no_such_layer' selects no Linear layer"),
    (["hybrid", "--layers", "mlp.(up"], "--layers 'mlp.(up' selects no Linear layer"),
    (["hybrid", "--prefill-lens", "100000"], "--allow-beyond-context"),
    (["hybrid", "--variants", "base,int4"], "argument --variants: 'base,int4': unknown 'int4'"),
    (["qat", "--n-train", "0"], "argument --n-train: 0 is not allowed"),
    (["qat", "--model", "no-such-bert"], "--model 'no-such-bert'"),
])
def test_bad_arguments_are_refused_before_work_starts(argv, expected, in_tmp, capsys, monkeypatch):
    import labkit.experiments.hybrid.bench as bench
    import labkit.experiments.qat_bert.bench as qat_bench

    monkeypatch.setattr(bench, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(qat_bench, "run_qat_bert", lambda *a, **k: pytest.fail("the experiment started"))
    err = _usage_error(capsys, [argv[0], "--profile", "quick", *argv[1:]])
    assert expected in err
    assert not (in_tmp / "runs").exists()


def test_interrupted_hybrid_run_resumes_with_the_missing_variants(in_tmp, monkeypatch):
    import labkit.experiments.hybrid.bench as bench
    from labkit.experiments.hybrid import HybridResult

    monkeypatch.setattr(bench, "load_causal_lm", lambda *a, **k: (object(), object()))
    asked: list[tuple[str, ...]] = []

    def variants_then_ctrl_c(stop_after):
        def fake(cfg, model, tokenizer, on_row=None, **kw):
            asked.append(cfg.variants)
            res = HybridResult(config={}, selected=["x"])
            for name in cfg.variants:
                if len(res.rows) == stop_after:
                    raise KeyboardInterrupt
                res.rows.append({"variant": name, "method": "float", "ppl": 10.0, "prefill": []})
                res.checks[name] = {"ok": True}
                on_row(res.rows[-1], res)
            return res
        return fake

    out = in_tmp / "h" / "result.json"
    argv = ["hybrid", "--profile", "quick", "--shape", "none", "--no-sensitivity", "--out", str(out),
            "--variants", "base,base-ft,ptq-w8a8,ft-ptq-w8a8"]
    monkeypatch.setattr(bench, "run_hybrid", variants_then_ctrl_c(stop_after=3))
    assert main(argv) == 130
    assert [r["row"]["variant"] for r in read_jsonl(out.with_suffix(".jsonl"))] == ["base", "base-ft", "ptq-w8a8"]
    monkeypatch.setattr(bench, "run_hybrid", variants_then_ctrl_c(stop_after=None))
    assert main(argv + ["--resume"]) == 0
    assert asked[-1] == ("base-ft", "ft-ptq-w8a8")  # base-ft is made again: ft-ptq quantizes its model
    data = json.loads(out.read_text())
    assert data["status"] == "complete"
    assert [r["variant"] for r in data["rows"]] == ["base", "base-ft", "ptq-w8a8", "ft-ptq-w8a8"]
    assert set(data["checks"]) == {"base", "base-ft", "ptq-w8a8", "ft-ptq-w8a8"}


def test_a_resume_that_measures_nothing_keeps_the_measuring_machines_provenance(tmp_path):
    """A run measured on one machine and resumed (only to finish and publish it) on another keeps the first
    machine's provenance on top, lists both attempts, and names the finishing one."""
    from labkit.results.run import Run

    json_path, jsonl_path = tmp_path / "result.json", tmp_path / "result.jsonl"
    measured = {"provenance": {"device_name": "NVIDIA H100", "cpu": "Xeon", "threads": 16, "command": "first"}}
    with Run(measured, json_path, jsonl_path) as run:
        run.record("row", {"x": 1})
    finished = {"provenance": {"device_name": "AMD EPYC", "cpu": "AMD EPYC", "threads": 2, "command": "second"}}
    with Run(finished, json_path, jsonl_path, resume=True) as run:
        assert run.once("row", lambda: pytest.fail("measured again"), x=1)["attempt"] == 1  # reused, not measured
    data = json.loads(json_path.read_text())
    assert data["provenance"]["device_name"] == "NVIDIA H100" and data["provenance"]["threads"] == 16
    assert data["provenance"]["finished_by"]["command"] == "second"
    assert [a["measurements"] for a in data["attempts"]] == [1, 0]
    assert [r["attempt"] for r in read_jsonl(jsonl_path)] == [1]
    # a resume that does measure describes itself
    again = {"provenance": {"device_name": "AMD EPYC", "command": "third"}}
    with Run(again, json_path, jsonl_path, resume=True) as run:
        run.record("row", {"x": 2})
    data = json.loads(json_path.read_text())
    assert data["provenance"]["command"] == "third" and len(data["attempts"]) == 3
    assert [r["attempt"] for r in read_jsonl(jsonl_path)] == [1, 3]  # each row says which attempt measured it
