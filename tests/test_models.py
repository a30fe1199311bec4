"""labkit.models: embedded models by short name, random-weight shapes, and clear errors for unknown names."""

import pytest
import torch

from labkit import models


def test_shape_builds_on_device_and_dtype_with_random_weights():
    model = models.build_from_shape("tiny-llama", dtype=torch.float32, device="cpu")
    p = next(model.parameters())
    assert p.device.type == "cpu" and p.dtype == torch.float32 and not model.training
    assert p.std() > 0  # initialised, not zeros
    out = model(torch.randint(0, 256, (1, 16))).logits
    assert out.shape == (1, 16, 256)


def test_big_shapes_have_the_real_parameter_counts():
    # On the meta device: shapes only, no memory.
    assert abs(models.parameter_count(models.build_from_shape("llama-2-7b", device="meta")) - 6.738e9) < 1e7
    l3 = models.build_from_shape("llama-3-8b", device="meta")
    assert abs(models.parameter_count(l3) - 8.03e9) < 1e7
    assert l3.config.num_key_value_heads == 8  # grouped-query attention
    assert models.build_from_shape("tiny-llama", device="meta", num_layers=1).config.num_hidden_layers == 1


def test_unknown_names_list_the_known_ones():
    with pytest.raises(models.UnknownModelError, match="llama-2-7b"):
        models.build_from_shape("llama-9000")
    with pytest.raises(models.UnknownModelError, match="smollm2-135m"):
        models.load_causal_lm("not-a-model")
    with pytest.raises(models.UnknownModelError, match="minilm-l6"):
        models.load_classifier("not-a-model")
    with pytest.raises(models.UnknownModelError, match="build_from_shape"):
        models.load_causal_lm("llama-2-7b")


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises(models.UnknownModelError, match="Loading it as a hub id failed"):
        models.load_causal_lm("no-such-org/no-such-model")


def test_gpu_device_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        models.build_from_shape("tiny-llama", device="cuda")


@pytest.mark.slow
def test_embedded_bert_classifier_runs():
    model, tok = models.load_classifier("minilm-l6", num_labels=2, device="cpu")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    batch = tok(["a fine film", "a dull film"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)


@pytest.mark.slow
def test_embedded_smollm2_loads_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_VARIABLE, str(tmp_path))
    model, tok = models.load_causal_lm("smollm2", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    cached = list(tmp_path.glob("smollm2-135m-*/model.safetensors"))
    assert len(cached) == 1
    again, _ = models.load_causal_lm("smollm2-135m", device="cpu")  # from the safetensors cache
    w0, w1 = model.model.layers[0].mlp.up_proj.weight, again.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w0, w1)
    ids = tok("The capital of France is", return_tensors="pt")
    out = again.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])  # real trained weights, not random ones
