"""torchao QAT / PTQ through labkit.quant on tiny models: real INT8 after convert, clear errors, safe save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from labkit.quant import EmptySelectionError
from labkit.quant.io import QuantizedCheckpointError, load_quantized, round_trip_check
from labkit.quant.ptq import (
    quantize_dynamic_int8,
    quantize_embeddings_int8,
    quantize_static_int8,
    quantize_weight_only_int8,
)
from labkit.quant.qat import QATStateError, convert_qat, prepare_qat, qat_state
from labkit.quant.report import fake_quantized_modules, int8_modules, is_int8_weight, quant_summary
from labkit.quant.size import size_on_disk_mb, weight_bytes

BERT = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)
ENCODER = r"^bert\.(encoder|pooler)\."


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BERT).eval()


def batch(n: int = 4, t: int = 12, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, BERT.vocab_size, (n, t), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def encoder_linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("bert.")]


def test_prepare_inserts_fake_quantizers_and_training_reaches_weights():
    model = prepare_qat(tiny_bert().train(), ENCODER, embeddings=True)
    fq = fake_quantized_modules(model)
    assert set(encoder_linears(tiny_bert())) <= set(fq)
    assert "bert.embeddings.word_embeddings" in fq and "classifier" not in fq
    out = model(**batch(), labels=torch.tensor([0, 1, 0, 1])).loss
    out.backward()
    w = model.get_submodule("bert.encoder.layer.0.attention.self.query").weight
    assert w.grad is not None and w.grad.abs().sum() > 0, "gradients must pass the fake quantizers (STE)"
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


@pytest.mark.parametrize("activations", ["int8-dynamic", "int8-dynamic-asym", None])
def test_convert_gives_real_int8_matching_fake_quant(activations):
    model = prepare_qat(tiny_bert(), ENCODER, activations=activations, embeddings=True)
    with torch.no_grad():
        fake = model(**batch()).logits
    convert_qat(model)
    names = int8_modules(model)
    assert set(names) == set(encoder_linears(model)) | {
        "bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings", "bert.embeddings.token_type_embeddings"}
    assert "classifier" not in names and not fake_quantized_modules(model)
    for name in names:
        w = model.get_submodule(name).weight
        assert is_int8_weight(w) and w.qdata.dtype == torch.int8, (name, type(w))
    q = model.get_submodule("bert.encoder.layer.0.output.dense").weight
    assert type(q).__name__ == "Int8Tensor"
    assert (q.act_quant_kwargs is None) == (activations is None)
    with torch.no_grad():
        real = model(**batch()).logits
    torch.testing.assert_close(real, fake, atol=1e-4, rtol=1e-4)  # what training saw is what inference does
    assert qat_state(model).converted


def test_qat_errors_are_clear():
    with pytest.raises(QATStateError, match="prepare_qat"):
        convert_qat(tiny_bert())
    model = prepare_qat(tiny_bert(), ENCODER)
    with pytest.raises(QATStateError, match="already"):
        prepare_qat(model, ENCODER)
    convert_qat(model)
    with pytest.raises(QATStateError, match="already"):
        convert_qat(model)
    with pytest.raises(EmptySelectionError, match="matches no"):
        prepare_qat(tiny_bert(), r"no_such_layer")
    with pytest.raises(EmptySelectionError):
        prepare_qat(tiny_bert(), ["bert.encoder.layer.9.output.dense"])
    with pytest.raises(ValueError, match="int8-dynamic"):
        prepare_qat(tiny_bert(), ENCODER, activations="int4")
    with pytest.raises(EmptySelectionError):
        quantize_dynamic_int8(tiny_bert(), lambda name, module: False)


def test_ptq_variants_are_int8_and_close_to_fp32():
    ref = tiny_bert()
    with torch.no_grad():
        want = ref(**batch()).logits
    dyn = quantize_embeddings_int8(quantize_dynamic_int8(copy.deepcopy(ref), ENCODER))
    wo = quantize_weight_only_int8(copy.deepcopy(ref), ENCODER)
    static = quantize_static_int8(copy.deepcopy(ref), ENCODER, [batch(seed=s) for s in range(3)])
    for model in (dyn, wo, static):
        assert set(encoder_linears(ref)) <= set(int8_modules(model))
        with torch.no_grad():
            got = model(**batch()).logits
        assert (got - want).abs().max() < 0.05
    assert "bert.embeddings.word_embeddings" in int8_modules(dyn)
    s = static.get_submodule("bert.encoder.layer.1.intermediate.dense").weight
    assert s.act_quant_scale is not None, "static PTQ must carry a calibrated activation scale"
    assert "weight-only" in quant_summary(wo)["bert.encoder.layer.0.output.dense"]
    with pytest.raises(ValueError, match="calibration_batches was empty"):
        quantize_static_int8(copy.deepcopy(ref), ENCODER, [])


def test_save_load_round_trip_identical_predictions(tmp_path):
    model = prepare_qat(tiny_bert(), ENCODER, embeddings=True)
    convert_qat(model)
    check = round_trip_check(model, tmp_path / "qat", tiny_bert, batch())
    assert check["same_predictions"] and check["max_abs_diff"] == 0.0
    reloaded = load_quantized(tmp_path / "qat", tiny_bert)
    assert int8_modules(reloaded) == int8_modules(model)
    assert size_on_disk_mb(model) < 0.6 * size_on_disk_mb(tiny_bert())
    assert weight_bytes(model) < 0.4 * weight_bytes(tiny_bert())
    static = quantize_static_int8(tiny_bert(), ENCODER, [batch()])
    assert round_trip_check(static, tmp_path / "static.safetensors", tiny_bert, batch())["max_abs_diff"] == 0.0
    small = BertConfig(**{**BERT.to_dict(), "num_hidden_layers": 1})
    with pytest.raises(QuantizedCheckpointError, match="does not fit"):
        load_quantized(tmp_path / "qat", lambda: BertForSequenceClassification(small))
    with pytest.raises(FileNotFoundError):
        load_quantized(tmp_path / "missing", tiny_bert)


def test_causal_lm_with_tied_embeddings_round_trips(tmp_path):
    """Model-agnostic: a tiny Llama with a tied lm_head, decoder Linears INT8, tie kept through save/load."""
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)

    def factory():
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg).eval()

    model = prepare_qat(factory(), r"^model\.layers\.")
    convert_qat(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = {"input_ids": torch.randint(0, 64, (2, 8))}
    check = round_trip_check(model, tmp_path / "llama", factory, ids)
    assert check["same_predictions"] and check["max_abs_diff"] == 0.0
    reloaded = load_quantized(tmp_path / "llama", factory)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert len(int8_modules(reloaded)) == 2 * 7


def test_bf16_model_prepare_and_convert():
    """notebook 03 runs the same API in bf16 on a GPU; the CPU path must accept bf16 too."""
    model = tiny_bert().to(torch.bfloat16)
    prepare_qat(model, ENCODER)
    with torch.no_grad():
        fake = model(**batch()).logits
    convert_qat(model)
    with torch.no_grad():
        real = model(**batch()).logits
    assert real.dtype == torch.bfloat16 and torch.isfinite(real).all()
    assert (real.float() - fake.float()).abs().max() < 0.05
