"""`bench deploy` on the run machinery: seeds, stages, --resume, --stages latency on an accuracy-only run folder,
targets judged over seeds (met / within noise / missed against the compiled-vs-eager floor), bad input refused
before any work. The heavy steps (training, export, evaluation, timing) are replaced by stand-ins: these tests
check the bookkeeping, tests/test_deploy_onnx.py checks the numerics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.bench import main
from labkit.experiments.deploy_bert import bench, pipeline
from labkit.experiments.deploy_bert.bench import latency_checks, match_check, targets


def _seed_result(seed: int, fp32=85.0, ao=85.5, ort=85.5, peer=85.0, differ_ort=3, differ_compiled=4, n=872):
    acc = {"torch-fp32": fp32, "torchao-int8": ao, "torchao-int8-compiled": ao, "ort-qat-int8": ort,
           "ort-peer-int8": peer}
    return {"seed": seed, "n_eval": n, "accuracy": {k: {"accuracy": v / 100, "f1": v / 100} for k, v in acc.items()},
            "differ_from_torchao_eager": {"torch-fp32": 60, "torchao-int8": 0, "torchao-int8-compiled": differ_compiled,
                                          "ort-qat-int8": differ_ort, "ort-peer-int8": 40},
            "sizes_mb": {"torch-fp32": 90.9, "qat-int8": 23.2}}


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """Replace training, the accuracy stage and timing by recording stand-ins; work in a temporary folder."""
    monkeypatch.chdir(tmp_path)
    calls = {"train": [], "accuracy": [], "latency": [], "profile": 0, "profile_ort": 0, "fail_seed": None}

    class Model:
        config = type("C", (), {"vocab_size": 100})()

    def train_models(cfg, models_from=None):
        calls["train"].append(cfg.seed)
        return {"fp32": Model(), "qat": Model(), "tokenizer": None, "eval_ds": [], "info": {"seed": cfg.seed}}

    def seed_accuracy(fp32, qat, eval_ds, tokenizer, *, compiled=True, threads=None):
        seed = calls["train"][-1]
        if calls["fail_seed"] == seed:
            raise RuntimeError(f"seed {seed} broke")
        calls["accuracy"].append(seed)
        return {k: v for k, v in _seed_result(seed, ort=85.5 + 0.1 * seed).items() if k != "seed"}

    def latency_table(models, artifacts, threads, *a, compiled=True, **k):
        calls["latency"].append(threads)
        ms = {"torch-fp32": 100.0, "ort-qat-int8": 30.0, "ort-peer-int8": 31.0}
        names = [*models, *(f"{m}-compiled" for m in models if compiled), *artifacts]
        return [{"variant": v, "threads": threads, "batch": 8, "p10_ms": t * 0.9, "p50_ms": t, "p90_ms": t * 1.1}
                for v in names if (t := ms.get(v, 50.0))]

    def profile_int8(*a, **k):
        calls["profile"] += 1
        return {"eager": {}, "compiled": {}}

    def profile_ort(paths, *a, **k):
        calls["profile_ort"] += 1
        return {v: {"total_ms": 1.0, "groups": {}} for v in paths}

    monkeypatch.setattr(pipeline, "train_models", train_models)
    monkeypatch.setattr(pipeline, "seed_accuracy", seed_accuracy)
    monkeypatch.setattr(pipeline, "latency_table", latency_table)
    monkeypatch.setattr(pipeline, "profile_int8", profile_int8)
    monkeypatch.setattr(pipeline, "profile_ort", profile_ort)
    monkeypatch.setattr(pipeline, "timing_models", lambda cfg: (Model(), Model()))
    monkeypatch.setattr("labkit.deploy.onnx_runtime.build_artifacts",
                        lambda fp32, qat, out: {k: {"path": "x"} for k in ("fp32", "qat-int8", "qat-int8-mha",
                                                                           "qat-int8-unfused", "qat-int8-exact",
                                                                           "peer")})
    return calls


def _deploy(*args: str) -> int:
    return main(["deploy", "--profile", "quick", "--threads", "1", "--batch-sizes", "8", *args])


def _result(out: Path) -> dict:
    return json.loads(out.read_text())


def test_resume_skips_finished_seeds_and_stages(stand_ins, tmp_path):
    out = tmp_path / "run" / "result.json"
    stand_ins["fail_seed"] = 1
    assert _deploy("--seeds", "0,1,2", "--out", str(out)) == 1  # seed 1 fails: the run fails, seed 0 is kept
    assert _result(out)["status"] == "failed" and stand_ins["accuracy"] == [0]
    stand_ins["fail_seed"] = None
    assert _deploy("--seeds", "0,1,2", "--out", str(out), "--resume") == 0
    assert stand_ins["accuracy"] == [0, 1, 2] and stand_ins["train"] == [0, 1, 1, 2]  # seed 0 not run again
    data = _result(out)
    assert data["status"] == "complete" and data["seeds"] == [0, 1, 2] and stand_ins["latency"] == [1]
    assert data["accuracy_summary"]["ort-qat-int8"]["n"] == 3
    assert data["accuracy_summary"]["ort-qat-int8"]["mean"] == pytest.approx(85.6)
    assert data["accuracy_summary"]["ort-qat-int8"]["sd"] == pytest.approx(0.1)
    assert _deploy("--seeds", "0,1,2", "--out", str(out), "--resume") == 0  # everything measured: nothing runs
    assert stand_ins["accuracy"] == [0, 1, 2] and stand_ins["latency"] == [1] and stand_ins["profile"] == 1
    profiled = set(_result(out)["profile_ort"])
    assert stand_ins["profile_ort"] == 1 and profiled == {"ort-qat-int8-exact", "ort-qat-int8-unfused", "ort-peer-int8"}
    again = _result(out)  # ... and the summary still holds what the earlier attempts measured
    assert len(again["latency"]) == len(data["latency"]) == 10 and again["profile_int8"]
    assert again["targets"] == data["targets"]


def test_resume_checks_models_only_for_the_seeds_it_still_measures(stand_ins, tmp_path, monkeypatch):
    """A resumed run may load its last seed from another `bench qat` run: --models-from is checked for the seeds
    still to measure, not for those the run already holds."""
    out = tmp_path / "run" / "result.json"
    assert _deploy("--seeds", "0", "--out", str(out), "--stages", "accuracy") == 0
    other = tmp_path / "qat_seed1"
    other.mkdir()
    checked = []
    monkeypatch.setattr(pipeline, "check_models_from", lambda folder, seeds, model: checked.append(list(seeds)))
    assert _deploy("--seeds", "0,1", "--out", str(out), "--resume", "--stages", "accuracy",
                   "--models-from", str(other)) == 0
    assert checked == [[1]] and stand_ins["accuracy"] == [0, 1] and _result(out)["seeds"] == [0, 1]
    checked.clear()
    fresh = tmp_path / "fresh" / "result.json"
    assert _deploy("--seeds", "0,1", "--out", str(fresh), "--stages", "accuracy", "--models-from", str(other)) == 0
    assert checked == [[0, 1]]  # a new run checks every seed


def test_latency_stage_alone_on_an_accuracy_only_run(stand_ins, tmp_path):
    out = tmp_path / "gpu-run" / "result.json"
    assert _deploy("--seeds", "0,1", "--out", str(out), "--stages", "accuracy") == 0
    data = _result(out)
    assert stand_ins["latency"] == [] and data["latency"] == [] and data["stages_done"]["accuracy"] == [0, 1]
    assert data["targets"][0]["verdict"] == "not measured"
    assert _deploy("--seeds", "0,1", "--out", str(out), "--resume", "--stages", "latency") == 0
    data = _result(out)
    assert stand_ins["accuracy"] == [0, 1] and stand_ins["latency"] == [1]  # seeds kept, latency measured once
    assert data["seeds"] == [0, 1] and {r["variant"] for r in data["latency"]} >= {"torch-fp32", "ort-qat-int8"}
    assert "untrained" in data["latency_info"]["models"]  # no models at hand: timing on the untrained conversion
    assert data["targets"][0]["verdict"] == "met"  # 30 / 100 ms, spread 0.25-0.37x: below 0.40x
    assert data["seed_results"]["0"]["n_eval"] == 872  # the accuracy stage's rows came through the JSONL


def test_resume_measures_a_latency_table_again_when_it_lacks_a_variant(stand_ins, tmp_path):
    """A run timed before a variant existed gets a new table at that thread count on --resume; the new table
    replaces the old one (rows are never mixed across tables) and the seeds are kept."""
    out = tmp_path / "run" / "result.json"
    assert _deploy("--seeds", "0", "--out", str(out), "--no-compile") == 0
    jsonl = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for r in rows:  # as written before the exact graph existed
        if r["record"] == "latency":
            r["rows"] = [x for x in r["rows"] if x["variant"] != "ort-qat-int8-exact"]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _deploy("--seeds", "0", "--out", str(out), "--no-compile", "--resume") == 0
    assert stand_ins["latency"] == [1, 1] and stand_ins["accuracy"] == [0]
    data = _result(out)
    variants = [r["variant"] for r in data["latency"]]
    assert "ort-qat-int8-exact" in variants and len(variants) == len(set(variants))
    assert _deploy("--seeds", "0", "--out", str(out), "--no-compile", "--resume") == 0
    assert stand_ins["latency"] == [1, 1]  # complete now: not measured a third time


def test_targets_over_seeds_three_way_match_verdict():
    same = [_seed_result(s, ao=85.5, ort=85.5 + d) for s, d in enumerate((0.0, 0.115, -0.115))]
    m = match_check(same)
    assert m["verdict"] == "met" and m["value"] == pytest.approx(0.0) and m["seeds"] == 3
    noisy = [_seed_result(s, ort=85.5 - 0.23, differ_ort=7, differ_compiled=6) for s in range(3)]
    m = match_check(noisy)  # 0.23 points apart, torchao compiled vs eager differ on 6 sentences = 0.69 points
    assert m["verdict"] == "within noise" and m["met"] is None and m["differ_per_seed"] == [7, 7, 7]
    assert m["floor"] == pytest.approx(600 / 872)
    far = [_seed_result(s, ort=85.5 - 1.5, differ_ort=20, differ_compiled=2) for s in range(3)]
    assert match_check(far)["verdict"] == "missed"
    assert match_check(noisy[:1])["verdict"] == "no verdict"  # one seed says nothing about the spread
    checks = {c["target"]: c for c in targets({"seed_results": {str(s["seed"]): s for s in same}})}
    fp32 = next(c for t, c in checks.items() if "of FP32" in t)
    assert fp32["verdict"] == "met" and "+-" in fp32["measured"]  # INT8 +0.5 points above FP32 on every seed


def test_faster_than_the_peer_is_within_noise_when_spreads_overlap():
    def rows(ort, peer):
        return [{"variant": v, "threads": 1, "batch": 8, "p10_ms": a, "p50_ms": b, "p90_ms": c}
                for v, (a, b, c) in (("torch-fp32", (900, 1000, 1100)), ("ort-qat-int8", ort), ("ort-peer-int8", peer))]
    assert latency_checks(rows((300, 350, 540), (305, 379, 505)))[1]["verdict"] == "within noise"
    assert latency_checks(rows((300, 400, 540), (305, 379, 505)))[1]["verdict"] == "within noise"  # p50 slower
    assert latency_checks(rows((250, 260, 270), (305, 379, 505)))[1]["verdict"] == "met"
    assert latency_checks(rows((520, 560, 600), (305, 379, 505)))[1]["verdict"] == "missed"


@pytest.mark.parametrize(("args", "message"), [
    (["--stages", "accuracy,speed"], "--stages"),
    (["--seeds", "0,x"], "--seeds"),
    (["--threads", "1,many"], "--threads"),
    (["--models-from", "runs/nothing-here"], "--models-from"),
    (["--update-reference"], "--update-reference"),
    (["--profile", "full", "--update-reference", "--stages", "accuracy"], "latency"),
])
def test_bad_input_is_refused_before_any_work(args, message, stand_ins, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _deploy(*args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and stand_ins["train"] == []


def test_models_from_a_qat_run_loads_the_trained_pair(tmp_path):
    """The FP32 and QAT models `bench qat` saves are loaded back; QAT converted to the same INT8 codes."""
    saved = pytest.importorskip("labkit.experiments.qat_bert.saved_models")
    import copy

    import torch

    from labkit.models import load_classifier
    from labkit.quant.qat import convert_qat, prepare_qat

    fp32 = load_classifier("minilm-l6", num_labels=2, device="cpu")[0]
    torch.manual_seed(0)
    fp32.classifier.weight.data.normal_(0, 0.5)
    qat = prepare_qat(copy.deepcopy(fp32), r"^bert\.(encoder|pooler)\.", embeddings=True)
    saved.save_trained(tmp_path, 0, "fp32", fp32, model_name="minilm-l6", info={"steps": 1})
    saved.save_trained(tmp_path, 0, "qat", qat, model_name="minilm-l6", info={"steps": 2})
    pipeline.check_models_from(tmp_path, (0,), "minilm-l6")
    with pytest.raises(ValueError, match="seed 1"):
        pipeline.check_models_from(tmp_path, (0, 1), "minilm-l6")
    with pytest.raises(ValueError, match="--model"):
        pipeline.check_models_from(tmp_path, (0,), "bert-base-uncased")
    f, q, info = pipeline.load_models(tmp_path, 0, "minilm-l6")
    convert_qat(qat.eval())
    w = "bert.encoder.layer.3.output.dense"
    assert torch.equal(q.get_submodule(w).weight.qdata, qat.get_submodule(w).weight.qdata)
    assert torch.equal(f.classifier.weight, fp32.classifier.weight) and info["qat"] == {"steps": 2}
