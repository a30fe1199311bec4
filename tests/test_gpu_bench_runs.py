"""The GPU benchmarks (triton-fa2, fast8bit, hybrid-qat) run on labkit.results.run like the others: a run folder by
default (never a committed reference), each measurement appended as it finishes, --resume skips what the JSONL
has, status complete / failed / interrupted with exit codes 0 / 1 / 130, bad arguments exit 2 before any work,
and --update-reference only for a complete full-profile run. On a CPU the GPU measurements are faked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.bench import main
from labkit.results import load_reference, read_jsonl, reference_dir

REFERENCES = sorted(reference_dir().glob("*.json"))


def _snapshot() -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in REFERENCES}


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def _only_run(tmp_path: Path, experiment: str) -> Path:
    found = sorted((tmp_path / "runs").glob(f"{experiment}_*/result.json"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# triton-fa2


@pytest.fixture
def fake_fa2(monkeypatch):
    """A GPU that is not there: every measurement of the benchmark faked, each call logged."""
    import labkit.attention.triton_fa2_bench as bench

    calls: list[tuple] = []
    state = {"interrupt_at": None, "check_ok": True}

    def log(item):
        if state["interrupt_at"] is not None and len(calls) == state["interrupt_at"]:
            raise KeyboardInterrupt
        calls.append(item)

    def check_case(batch, heads, kv_heads, n, head_dim, dtype, causal, seed):
        log(("check", n))
        return {"seq_len": n, "seed": seed, "ok": state["check_ok"], "triton-fa2": {"out": 1e-3}}

    def time_case(backend, n, d, heads, causal, backward):
        log(("time", backend, n, d, backward))
        return {"backend": backend, "direction": "backward" if backward else "forward", "seq_len": n,
                "head_dim": d, "ok": True, "ms": 1.0, "tflops": 100.0, "error": None}

    def kernel_breakdown(backend, n, d, heads):
        log(("breakdown", backend))
        return {"backend": backend, "wall_us": 10.0, "gpu_us": 5.0}

    monkeypatch.setattr("labkit.experiments.protocol.cuda_visible", lambda: True)
    monkeypatch.setattr(bench, "check_case", check_case)
    monkeypatch.setattr(bench, "time_case", time_case)
    monkeypatch.setattr(bench, "kernel_breakdown", kernel_breakdown)
    return calls, state


FA2 = ["triton-fa2", "--profile", "quick", "--backends", "triton-fa2,fa2"]


@pytest.mark.parametrize("argv, expected", [
    (["--seq-lens", "1024,x"], "argument --seq-lens: '1024,x' is not a comma-separated list of whole numbers"),
    (["--head-dims", "0"], "argument --head-dims: '0': every value must be at least 1"),
    (["--backends", "fa3"], "argument --backends: 'fa3': unknown 'fa3'; choose from triton-fa2,fa2,cudnn"),
    (["--update-reference"], "--update-reference with --profile quick"),
    (["--resume"], "--resume needs --out"),
])
def test_triton_fa2_bad_arguments_exit_2_before_work(argv, expected, in_tmp, capsys, fake_fa2):
    before = _snapshot()
    assert expected in _usage_error(capsys, [*FA2, *argv])
    assert fake_fa2[0] == [] and not (in_tmp / "runs").exists() and not (in_tmp / "build").exists()
    assert _snapshot() == before


def test_triton_fa2_writes_a_run_folder_and_appends_each_measurement(in_tmp, fake_fa2):
    calls, _ = fake_fa2
    before = _snapshot()
    assert main(FA2) == 0
    assert _snapshot() == before and not (in_tmp / "build").exists()
    out = _only_run(in_tmp, "triton_fa2")
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and data["experiment"] == "triton_fa2"
    assert len(data["checks"]) == 2 and len(data["rows"]) == 2 * 2 * 2 and len(data["backward_breakdown"]) == 2
    kinds = [r["record"] for r in read_jsonl(out.with_suffix(".jsonl"))]
    assert kinds == ["check"] * 2 + ["timing"] * 8 + ["breakdown"] * 2
    assert len(calls) == 12 and [t["verdict"] for t in data["targets"]] == ["met"]


def test_triton_fa2_interrupted_then_resumed_measures_only_the_rest(in_tmp, fake_fa2):
    calls, state = fake_fa2
    out = in_tmp / "runs" / "fa2" / "result.json"
    state["interrupt_at"] = 5
    assert main([*FA2, "--out", str(out)]) == 130
    assert json.loads(out.read_text())["status"] == "interrupted"
    assert len(read_jsonl(out.with_suffix(".jsonl"))) == 5
    first = list(calls)
    state["interrupt_at"] = None
    calls.clear()
    assert main([*FA2, "--out", str(out), "--resume"]) == 0
    assert not set(calls) & set(first) and len(calls) == 12 - 5
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and len(data["rows"]) == 8 and data["resumed"]["measurements_reused"] == 5


def test_triton_fa2_failed_check_fails_the_run_and_spares_the_reference(in_tmp, fake_fa2):
    _, state = fake_fa2
    state["check_ok"] = False
    assert main(["triton-fa2", "--profile", "full", "--update-reference", "--seq-lens", "1024", "--head-dims", "64",
                 "--backends", "fa2"]) == 1
    data = json.loads(_only_run(in_tmp, "triton_fa2").read_text())
    assert data["status"] == "failed" and "correctness check 0" in data["reason"]
    assert not (in_tmp / "data" / "reference").exists()
    state["check_ok"] = True
    assert main(["triton-fa2", "--profile", "full", "--update-reference", "--seq-lens", "1024", "--head-dims", "64",
                 "--backends", "fa2", "--no-check"]) == 0
    ref = json.loads((in_tmp / "data" / "reference" / "triton_fa2_cpu.json").read_text())
    assert ref["status"] == "complete" and "files" not in ref


def test_committed_triton_fa2_reference_loads_through_the_one_loader():
    data, message = load_reference("triton_fa2", "h100")
    assert data is not None, message
    assert data["status"] == "complete" and len(data["rows"]) > 0 and len(data["prefill"]) > 0


# ---------------------------------------------------------------------------------------------------------------
# fast8bit


@pytest.fixture
def fake_fast8bit(monkeypatch):
    """The four parts faked (each makes two measurements, skipping what `record.done` finds), no GPU needed."""
    import labkit.experiments.fast8bit.bench as driver

    made: list[tuple] = []
    state = {"interrupt_at": None, "broken": None}

    def fake(part):
        def run_part(record, *args, **kwargs):
            if part == state["broken"]:
                raise RuntimeError(f"{part} cannot run")
            for i in range(2):
                if record.done(part=part, variant=f"v{i}", compiled=True) is not None:
                    continue
                if state["interrupt_at"] is not None and len(made) == state["interrupt_at"]:
                    raise KeyboardInterrupt
                made.append((part, i))
                record({"part": part, "variant": f"v{i}", "compiled": True, "ok": True, "compile_s": 2.0,
                        "p50_ms": 1.0})
                # appended as soon as it is made, not at the end
                assert len(read_jsonl(record.run.jsonl_path)) == len(record.run.result["rows"])
        return run_part

    monkeypatch.setattr("labkit.experiments.protocol.cuda_visible", lambda: True)
    for part in ("kernel", "block", "decode", "prefill"):
        monkeypatch.setattr(driver, f"{part}_part", fake(part))
    return made, state


F8 = ["fast8bit", "--profile", "quick"]


@pytest.mark.parametrize("argv", [FA2, F8], ids=["triton-fa2", "fast8bit"])
def test_gpu_benchmark_without_a_gpu_is_a_usage_error(argv, in_tmp, capsys):
    """triton-fa2 and fast8bit need an NVIDIA GPU: without one they exit 2 and write nothing."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert "needs an NVIDIA GPU" in _usage_error(capsys, argv)
    assert not (in_tmp / "runs").exists() and not (in_tmp / "build").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--parts", "kernel,nope"], "argument --parts: 'kernel,nope': unknown 'nope'; choose from kernel,block,"),
    (["--ms", "1,0"], "argument --ms: '1,0': every value must be at least 1"),
    (["--block-variants", "int4"], "argument --block-variants: 'int4': unknown 'int4'"),
    (["--new-tokens", "1"], "--new-tokens 1: must be at least 2"),
    (["--update-reference"], "--update-reference with --profile quick"),
    (["--profile", "full", "--update-reference", "--parts", "kernel"], "holds every part"),
    (["--resume"], "--resume needs --out"),
])
def test_fast8bit_bad_arguments_exit_2_before_work(argv, expected, in_tmp, capsys, fake_fast8bit):
    before = _snapshot()
    assert expected in _usage_error(capsys, [*F8, *argv])
    assert fake_fast8bit[0] == [] and not (in_tmp / "runs").exists() and not (in_tmp / "build").exists()
    assert _snapshot() == before


def test_fast8bit_cut_short_then_resumed_skips_finished_measurements(in_tmp, fake_fast8bit):
    made, state = fake_fast8bit
    before = _snapshot()
    state["interrupt_at"] = 3  # a time limit ends the first call inside the block part
    assert main(F8) == 130
    out = _only_run(in_tmp, "fast8bit")
    data = json.loads(out.read_text())
    assert data["status"] == "interrupted" and f"--resume --out {out.relative_to(in_tmp)}" in data["reason"]
    assert [r["record"] for r in read_jsonl(out.with_suffix(".jsonl"))] == ["kernel", "kernel", "block"]
    state["interrupt_at"] = None
    made.clear()
    assert main([*F8, "--out", str(out.parent), "--resume"]) == 0
    assert made == [("block", 1), ("decode", 0), ("decode", 1), ("prefill", 0), ("prefill", 1)]
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and len(data["rows"]) == 8
    assert [r["attempt"] for r in data["rows"]] == [1, 1, 1, 2, 2, 2, 2, 2]
    assert all("compile_s" in r and "p50_ms" in r for r in data["rows"])  # compile time kept apart from run time
    assert _snapshot() == before and not (in_tmp / "build").exists()


def test_fast8bit_part_that_cannot_run_fails_the_run(in_tmp, fake_fast8bit):
    made, state = fake_fast8bit
    state["broken"] = "decode"
    assert main([*F8]) == 1
    data = json.loads(_only_run(in_tmp, "fast8bit").read_text())
    assert data["status"] == "failed" and "part decode: RuntimeError: decode cannot run" in data["reason"]
    assert {p for p, _ in made} == {"kernel", "block", "prefill"}


def test_fast8bit_update_reference_copies_a_complete_full_run(in_tmp, fake_fast8bit):
    assert main(["fast8bit", "--profile", "full", "--update-reference"]) == 0
    ref = json.loads((in_tmp / "data" / "reference" / "fast8bit_cpu.json").read_text())
    assert ref["status"] == "complete" and ref["provenance"]["profile"] == "full" and len(ref["rows"]) == 8


def test_fast8bit_end_to_end_parts_skip_what_an_earlier_attempt_measured(monkeypatch):
    """The real decode and prefill parts: nothing recorded is measured again (no model is even built)."""
    import labkit.experiments.fast8bit.bench as fb
    import labkit.measure.generation as generation

    class Record:
        def __init__(self, previous):
            self.previous, self.rows = previous, []

        def done(self, **match):
            return next((r for r in self.previous if all(r.get(k) == v for k, v in match.items())), None)

        def __call__(self, row, quiet=False):
            self.rows.append(row)

    built = []
    monkeypatch.setattr(fb, "_build", lambda shape, variant, attn: built.append(variant) or object())
    monkeypatch.setattr(fb, "_weight_gib", lambda model: 1.0)
    monkeypatch.setattr(generation, "compiled_prefill",
                        lambda model, n, compiled, budget_s: {"seq_len": n, "compiled": compiled, "p50_ms": 1.0})
    monkeypatch.setattr("labkit.measure.prefill.random_input_ids", lambda model, n: None)
    monkeypatch.setattr(generation, "cuda_kernels", lambda fn, warmup=0: [])
    monkeypatch.setattr(fb, "kernel_check", lambda variant, m, kernels: {"kernel_ok": True})
    settings = fb.Settings.for_profile("quick", prefill_len=64, prompt=4, new_tokens=4, decode_repeat=1)
    previous = [{"part": "decode", "variant": v, "compiled": c} for v in ("bf16", "labkit-int8-ff") for c in (0, 1)]
    previous = [{**r, "compiled": bool(r["compiled"])} for r in previous]
    previous += [{"part": "prefill", "variant": "bf16", "compiled": c} for c in (False, True)]
    previous += [{"part": "prefill", "variant": "w8a8-ff", "compiled": False}]
    record = Record(previous)
    fb.decode_part(record, settings, ["bf16", "labkit-int8-ff"])
    fb.prefill_part(record, settings, ["bf16", "w8a8-ff"])
    assert built == ["w8a8-ff"]
    assert [(r["part"], r["variant"], r["compiled"]) for r in record.rows] == [("prefill", "w8a8-ff", True)]


def test_a_time_limit_sigterm_ends_a_run_as_interrupted(tmp_path):
    """A device call's time limit sends SIGTERM: the run says `interrupted` (with the --resume hint), not `running`."""
    import os
    import signal

    from labkit.results.run import Run

    run = Run({"rows": []}, tmp_path / "result.json", tmp_path / "result.jsonl")
    with run:
        run.record("row", {"x": 1})
        os.kill(os.getpid(), signal.SIGTERM)
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["status"] == "interrupted" and "--resume" in data["reason"] and run.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


# ---------------------------------------------------------------------------------------------------------------
# hybrid-qat (FSDP2): one gloo process on the CPU, a 2-layer random Llama


HQ = ["hybrid-qat", "--profile", "quick", "--model", "tiny-llama", "--seq-lens", "16", "--global-batch", "2",
      "--steps", "2", "--modes", "qat-w8a8,plain"]


@pytest.fixture
def one_process(monkeypatch):
    """The job's environment as a plain `python` process on the CPU (init_distributed fills it in; restored after)."""
    import os

    saved = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    os.environ["LABKIT_FSDP_DEVICE"] = "cpu"

    def fresh():
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(key, None)

    yield fresh
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("argv, expected", [
    (["--update-reference"], "combines several runs"),
    (["--resume"], "--resume needs --out"),
    (["--modes", "qat-w4"], "--modes"),
    (["--from-checkpoint"], "--checkpoint-dir"),
])
def test_hybrid_qat_bad_arguments_exit_2_before_work(argv, expected, in_tmp, capsys, one_process, monkeypatch):
    import labkit.train.fsdp_qat as fq

    monkeypatch.setattr(fq, "init_distributed", lambda *a, **k: pytest.fail("the job started"))
    before = _snapshot()
    assert expected in _usage_error(capsys, [*HQ, *argv])
    assert not (in_tmp / "runs").exists() and not (in_tmp / "build").exists() and _snapshot() == before


def test_hybrid_qat_interrupted_then_resumed_skips_finished_runs(in_tmp, one_process, monkeypatch):
    import labkit.train.fsdp_qat as fq

    real_train, trained = fq.train, []

    def train(model, blocks, cfg, env, **kw):
        if stop and cfg.qat is False:
            raise KeyboardInterrupt
        trained.append("qat" if cfg.qat else "plain")
        return real_train(model, blocks, cfg, env, **kw)

    monkeypatch.setattr(fq, "train", train)
    stop = True
    before = _snapshot()
    assert main(HQ) == 130
    out = _only_run(in_tmp, "hybrid_qat_fsdp")
    data = json.loads(out.read_text())
    assert data["status"] == "interrupted" and trained == ["qat"]
    kinds = [r["record"] for r in read_jsonl(out.with_suffix(".jsonl"))]
    assert kinds == ["step", "step", "run"]  # each step appended as it finished, then the finished run
    stop = False
    trained.clear()
    one_process()
    assert main([*HQ, "--out", str(out.relative_to(in_tmp)), "--resume"]) == 0
    assert trained == ["plain"], "the finished qat-w8a8 run must not train again"
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and [r["mode"] for r in data["runs"]] == ["qat-w8a8", "plain"]
    assert all(r["status"] == "ok" and len(r["losses"]) == 2 for r in data["runs"])
    assert _snapshot() == before and not (in_tmp / "build").exists()


def test_hybrid_qat_reference_is_combined_only_from_complete_full_runs(tmp_path, monkeypatch):
    from labkit.experiments.hybrid_qat_fsdp_results import combine
    from labkit.results import write_json

    monkeypatch.setenv("LABKIT_REFERENCE_DIR", str(tmp_path / "ref"))
    (tmp_path / "ref").mkdir()
    part = {"experiment": "hybrid_qat_fsdp", "provenance": {"profile": "quick", "date": "d", "command": "c"},
            "status": "complete", "world_size": 2, "runs": []}
    write_json(tmp_path / "quick.json", part)
    with pytest.raises(ValueError, match=r"shape_a \(profile is 'quick'"):
        combine({"shape_a": tmp_path / "quick.json"}, tmp_path / "ref" / "hybrid_qat_fsdp_h200x2.json")
    assert not (tmp_path / "ref" / "hybrid_qat_fsdp_h200x2.json").exists()


def test_fast8bit_kernel_and_block_parts_measured_before_are_not_measured_again(monkeypatch):
    """All of the kernel part in the JSONL: nothing runs (no GPU touched) and the tuned launch configs it found are
    put back for the later parts; likewise the block part."""
    from labkit.experiments.fast8bit.bench import FF_SHAPES, block_part, kernel_part
    from labkit.quant import int8_kernel as ik

    class Record:
        def __init__(self, previous):
            self.previous = previous

        def done(self, **match):
            return next((r for r in self.previous if all(r.get(k) == v for k, v in match.items())), None)

        def __call__(self, row, quiet=False):
            pytest.fail(f"measured again: {row}")

    config = {"block_m": 1, "block_n": 8, "block_k": 512, "split_k": 1, "num_warps": 2, "num_stages": 4}
    previous = [{"part": "kernel", "kind": "kernel", "n": n, "k": k, "m": m} for n, k in FF_SHAPES for m in (1, 16)]
    previous += [{"part": "kernel", "kind": "tuned", "n": 11008, "k": 4096, "m": 1, "config": config}]
    monkeypatch.setattr(ik, "TUNED", dict(ik.TUNED))
    kernel_part(Record(previous), ms=(1, 16))
    assert ik.TUNED[(1, 11008, 4096)] == ik.KernelConfig(**config)
    block_rows = [{"part": "block", "variant": "bf16", "compiled": c, "m": m} for c in (False, True) for m in (1, 8)]
    block_part(Record(block_rows + [{"part": "block", "variant": "fp8-rowwise", "compiled": c, "skipped": "no fp8"}
                                    for c in (False, True)]), [1, 8], ["bf16", "fp8-rowwise"])


def test_hybrid_qat_run_that_errored_fails_and_is_tried_again_on_resume(in_tmp, one_process, monkeypatch):
    import labkit.train.fsdp_qat as fq

    real_train, trained = fq.train, []

    def train(model, blocks, cfg, env, **kw):
        trained.append("qat" if cfg.qat else "plain")
        if broken and not cfg.qat:
            raise RuntimeError("boom")
        return real_train(model, blocks, cfg, env, **kw)

    monkeypatch.setattr(fq, "train", train)
    broken = True
    assert main(HQ) == 1
    out = _only_run(in_tmp, "hybrid_qat_fsdp")
    data = json.loads(out.read_text())
    assert data["status"] == "failed" and "plain @ 16: RuntimeError: boom" in data["reason"]
    broken = False
    trained.clear()
    one_process()
    assert main([*HQ, "--out", str(out.relative_to(in_tmp)), "--resume"]) == 0
    assert trained == ["plain"]
    assert json.loads(out.read_text())["status"] == "complete"


def test_out_without_a_suffix_is_a_run_folder(in_tmp, fake_fast8bit):
    assert main([*F8, "--out", "runs/fast8bit_h100"]) == 0
    assert (in_tmp / "runs" / "fast8bit_h100" / "result.json").is_file()
    assert (in_tmp / "runs" / "fast8bit_h100" / "result.jsonl").is_file()
