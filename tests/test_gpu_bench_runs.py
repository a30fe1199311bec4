"""The GPU benchmarks (triton-fa2, fast8bit, hybrid-qat) run on labkit.results.run like the others: a run folder by
default (never a committed reference), each measurement appended as it finishes, --resume skips what the JSONL
has, status complete / failed / interrupted with exit codes 0 / 1 / 130, bad arguments exit 2 before any work,
and --update-reference only for a complete full-profile run. On a CPU the GPU measurements are faked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.cli import main
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

    monkeypatch.setattr(bench, "gpu_unavailable_reason", lambda: None)
    monkeypatch.setattr(bench, "check_case", check_case)
    monkeypatch.setattr(bench, "time_case", time_case)
    monkeypatch.setattr(bench, "kernel_breakdown", kernel_breakdown)
    return calls, state


FA2 = ["triton-fa2", "--profile", "quick", "--backends", "triton-fa2,fa2"]


@pytest.mark.parametrize("argv, expected", [
    (["--seq-lens", "1024,x"], "--seq-lens '1024,x'"),
    (["--head-dims", "0"], "--head-dims '0': every value must be at least 1"),
    (["--backends", "fa3"], "--backends 'fa3': unknown ['fa3']"),
    (["--reference"], "--update-reference"),
    (["--update-reference"], "--update-reference with --profile quick"),
    (["--resume"], "--resume needs --out"),
])
def test_triton_fa2_bad_arguments_exit_2_before_work(argv, expected, in_tmp, capsys, fake_fa2):
    before = _snapshot()
    assert expected in _usage_error(capsys, [*FA2, *argv])
    assert fake_fa2[0] == [] and not (in_tmp / "runs").exists() and not (in_tmp / "build").exists()
    assert _snapshot() == before


def test_triton_fa2_without_a_gpu_is_a_usage_error(in_tmp, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert "needs an NVIDIA GPU" in _usage_error(capsys, FA2)
    assert not (in_tmp / "runs").exists() and not (in_tmp / "build").exists()


def test_triton_fa2_writes_a_run_folder_and_appends_each_measurement(in_tmp, fake_fa2):
    calls, _ = fake_fa2
    before = _snapshot()
    assert main(FA2) == 0
    assert _snapshot() == before and not (in_tmp / "build").exists()
    out = _only_run(in_tmp, "triton_fa2")
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and data["experiment"] == "triton_fa2"
    assert len(data["checks"]) == 2 and len(data["rows"]) == 2 * 2 * 2 and len(data["backward_breakdown"]) == 2
    kinds = [r["kind"] for r in read_jsonl(out.with_suffix(".jsonl"))]
    assert kinds == ["check"] * 2 + ["timing"] * 8 + ["breakdown"] * 2
    assert len(calls) == 12


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
    """data/reference/triton_fa2_h100.json was written with status "done" (the old writer): the loader reads it."""
    from labkit.attention.triton_fa2_bench import load_committed

    assert json.loads((reference_dir() / "triton_fa2_h100.json").read_text())["status"] == "done"
    data, message = load_reference("triton_fa2", "h100")
    assert data is not None, message
    assert data["status"] == "complete" and len(data["rows"]) > 0
    assert load_committed("h100")["rows"] == data["rows"]


def test_done_is_read_as_complete_only_by_the_loader(tmp_path):
    from labkit.results import is_reference, write_json

    write_json(tmp_path / "triton_fa2_h100.json", {"provenance": {"profile": "quick"}, "status": "done"})
    assert load_reference("triton_fa2", "h100", directory=tmp_path)[0] is None  # still only full-profile runs
    assert not is_reference({"provenance": {"profile": "full"}, "status": "done"})[0]
