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


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.UnknownModelError, match="hub is unreachable .HF_HUB_OFFLINE=1 is set.") as err:
        models.load_causal_lm("no-such-org/no-such-model")
    assert "'smollm2-135m'" in str(err.value) and "local folder" in str(err.value)


class _Loaded:
    """Stands in for a transformers model or tokenizer: records the id it was loaded from."""

    pad_token = eos_token = "<eos>"

    def __init__(self, source):
        self.source = source

    def to(self, device):
        return self

    def eval(self):
        return self


def _record_loads(monkeypatch, error: Exception | None = None) -> list[str]:
    import transformers

    sources: list[str] = []

    def from_pretrained(source, *args, **kwargs):
        sources.append(source)
        if error is not None:
            raise error
        return _Loaded(source)

    for cls in ("AutoTokenizer", "AutoModelForSequenceClassification", "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", staticmethod(from_pretrained))
    return sources


@pytest.mark.parametrize("name", ["bert-base-uncased", "google-bert/bert-base-uncased", "distilbert-base-uncased"])
def test_hub_ids_without_an_org_are_hub_ids(monkeypatch, name):
    sources = _record_loads(monkeypatch)
    model, tokenizer = models.load_classifier(name, device="cpu")
    assert model.source == tokenizer.source == name and sources == [name, name]


@pytest.mark.parametrize("name", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_causal_lm_hub_ids_with_or_without_an_org(monkeypatch, name):
    _record_loads(monkeypatch)
    model, _ = models.load_causal_lm(name, device="cpu")
    assert model.source == name


def test_names_the_hub_cannot_accept_are_refused_before_any_load(monkeypatch):
    sources = _record_loads(monkeypatch)
    for name in ("not a model", "a/b/c", "--bad--"):
        with pytest.raises(models.UnknownModelError, match="not an embedded name .minilm-l6."):
            models.load_classifier(name)
    assert sources == []


def test_offline_and_missing_hub_ids_say_which_and_name_the_local_alternatives(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    no_network = OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find "
                         "them in the cached files.")
    _record_loads(monkeypatch, no_network)
    with pytest.raises(models.UnknownModelError, match="hub is unreachable .no network connection") as err:
        models.load_classifier("bert-base-uncased")
    assert "'minilm-l6'" in str(err.value) and "local folder" in str(err.value)
    missing = OSError("bert-base-uncasd is not a local folder and is not a valid model identifier listed on "
                      "'https://huggingface.co/models'")
    _record_loads(monkeypatch, missing)
    with pytest.raises(models.UnknownModelError, match="could not be loaded as a hub id") as err:
        models.load_classifier("bert-base-uncasd")
    assert "Check the spelling" in str(err.value) and "'minilm-l6'" in str(err.value)


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
