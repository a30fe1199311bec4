"""`bench qat --resume` really resumes: the trained models of a seed cut short are reloaded from the run folder
(safetensors), not trained again, and the measurements go on from there. CPU, a tiny BERT, training faked."""

from __future__ import annotations

import json

import pytest
import torch

from labkit.bench import main
from labkit.results import read_jsonl


def _tiny_bert(*args, **kwargs):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from labkit.models import load_classifier

    tokenizer = _tiny_bert.tokenizer
    if tokenizer is None:
        tokenizer = _tiny_bert.tokenizer = load_classifier("minilm-l6", num_labels=2, device="cpu")[1]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=160, num_labels=2)
    return BertForSequenceClassification(config).eval(), tokenizer


_tiny_bert.tokenizer = None


@pytest.fixture
def fake_training(tmp_path, monkeypatch):
    """A tiny BERT instead of MiniLM, and `train` replaced by a weight change that records which stage trained."""
    import labkit.experiments.qat_bert.pipeline as pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "load_classifier", _tiny_bert)
    calls: list[str] = []
    stop = {"at": None}

    def train(model, train_ds, tokenizer, cfg, steps, lr, run_name):
        if run_name == stop["at"]:
            raise KeyboardInterrupt
        calls.append(f"{run_name}@{cfg.seed}")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * (len(calls) + 1))
        return {"steps": steps, "train_loss": 0.1 * len(calls), "lr": lr, "device": "cpu"}

    monkeypatch.setattr(pipeline, "train", train)
    return calls, stop


ARGS = ["qat", "--profile", "quick", "--no-compile", "--n-train", "32", "--n-eval", "16", "--seeds", "0,1",
        "--out", "runs/qat_test/"]


def test_resume_reloads_trained_models_instead_of_training(fake_training, tmp_path):
    calls, stop = fake_training
    stop["at"] = "qat"  # the first attempt is interrupted during seed 0's QAT training
    assert main(ARGS) == 130
    run = tmp_path / "runs" / "qat_test"
    assert json.loads((run / "result.json").read_text())["status"] == "interrupted"
    assert calls == ["fp32@0", "fp32-extra@0"]
    assert sorted(p.name for p in (run / "models" / "seed0").iterdir()) == [
        "fp32-extra.json", "fp32-extra.safetensors", "fp32.json", "fp32.safetensors"]

    stop["at"] = None
    calls.clear()
    assert main([*ARGS, "--resume"]) == 0
    assert calls == ["qat@0", "fp32@1", "fp32-extra@1", "qat@1"], "seed 0's FP32 stages must be reloaded, not retrained"
    data = json.loads((run / "result.json").read_text())
    assert data["status"] == "complete" and data["seeds"] == [0, 1]
    rows = {r["variant"]: r for r in data["seed_rows"]["0"]}
    assert rows["fp32"]["train_loss"] == pytest.approx(0.1) and rows["fp32-extra"]["train_loss"] == pytest.approx(0.2)
    kinds = [r["record"] for r in read_jsonl(run / "result.jsonl")]
    assert kinds.count("seed") == 2 and kinds[-1] == "seed"
    for seed in (0, 1):
        assert (run / "models" / f"seed{seed}" / "qat.safetensors").is_file()


def test_resume_refuses_models_trained_with_other_settings(fake_training, tmp_path):
    calls, stop = fake_training
    stop["at"] = "qat"
    assert main(ARGS) == 130
    stop["at"] = None
    assert main([*ARGS, "--resume", "--extra-steps", "5"]) == 1
    data = json.loads((tmp_path / "runs" / "qat_test" / "result.json").read_text())
    assert data["status"] == "failed" and "trained with other settings (extra_steps)" in data["reason"]
