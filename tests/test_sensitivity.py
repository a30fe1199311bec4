"""Per-layer sensitivity on a tiny 2-layer Llama built in the test: roles, the measurement, restoration."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from labkit.quant.selection import EmptySelectionError
from labkit.quant.sensitivity import (
    describe_linears,
    layer_role,
    layer_sensitivity,
    least_sensitive,
    quantized_alone,
)
from labkit.plots import sensitivity_heatmap


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # heavier-tailed weights than the init, so INT8 rounding visibly moves the outputs
        for p in model.parameters():
            p.mul_(8.0) if p.dim() == 2 else None
    return model


@pytest.fixture(scope="module")
def batches():
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))


def test_layer_roles():
    assert layer_role("model.layers.12.self_attn.q_proj") == (12, "q")
    assert layer_role("model.layers.3.self_attn.o_proj") == (3, "o")
    assert layer_role("model.layers.0.mlp.down_proj") == (0, "down")
    assert layer_role("lm_head") == (None, "lm_head")
    assert layer_role("bert.encoder.layer.5.attention.output.dense") == (5, "o")
    assert layer_role("bert.encoder.layer.5.output.dense") == (5, "down")
    assert layer_role("classifier") == (None, "other")


def test_describe_linears_marks_the_tied_head(tiny):
    info = describe_linears(tiny)
    assert len(info) == 15
    assert info.groupby("role").size().to_dict() == {r: 2 for r in ("q", "k", "v", "o", "gate", "up", "down")} | {
        "lm_head": 1}
    assert info.set_index("name").at["lm_head", "tied"]
    assert not info.set_index("name").at["model.layers.0.mlp.up_proj", "tied"]


def test_quantized_alone_changes_outputs_and_restores(tiny, batches):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    ref = tiny(batches).logits
    with quantized_alone(tiny.lm_head, "w8"):
        moved = tiny(batches).logits
    assert not torch.equal(ref, moved)
    assert torch.equal(tiny(batches).logits, ref)
    assert "forward" not in tiny.lm_head.__dict__
    assert tiny.lm_head.weight is tiny.model.embed_tokens.weight  # still tied, embedding never rounded
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def test_layer_sensitivity_table(tiny, batches):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    table = layer_sensitivity(tiny, batches, progress=False)
    assert list(table["name"]) == list(describe_linears(tiny)["name"])
    assert set(table.columns) >= {"name", "block", "role", "params", "kl", "ppl", "ppl_delta"}
    assert (table["kl"] > -1e-6).all() and table["kl"].max() > 1e-6
    assert table.attrs["base_ppl"] > 1 and table.attrs["mode"] == "w8a8" and table.attrs["tokens"] == 2 * 23
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    # weight-only rounding moves the outputs less than rounding the inputs too, summed over the model
    w8 = layer_sensitivity(tiny, batches, r"mlp", mode="w8", progress=False)
    assert len(w8) == 6 and w8["kl"].sum() < table[table["name"].str.contains("mlp")]["kl"].sum()


def test_bad_inputs(tiny, batches):
    with pytest.raises(ValueError, match="mode"):
        layer_sensitivity(tiny, batches, mode="int4", progress=False)
    with pytest.raises(EmptySelectionError):
        layer_sensitivity(tiny, batches, r"no_such_layer", progress=False)


def test_least_sensitive_and_heatmap(tiny, batches):
    table = layer_sensitivity(tiny, batches, progress=False)
    pick = least_sensitive(table, 20)  # ceil(15 * 0.2) = 3
    lowest = set(table.nsmallest(3, "kl")["name"])
    assert set(pick) == lowest and pick == [n for n in table["name"] if n in lowest]
    assert "lm_head" not in least_sensitive(table, 100, exclude=["lm_head"])
    with pytest.raises(ValueError, match="percent"):
        least_sensitive(table, 0)
    fig = sensitivity_heatmap(table)
    heat = fig.data[0]
    assert list(heat.y) == ["block 0", "block 1", "head"]
    assert list(heat.x) == ["q", "k", "v", "o", "gate", "up", "down", "lm_head"]


@pytest.mark.parametrize("mode", ["w8a8", "w8"])
def test_one_layer_alone_equals_its_real_int8_ptq(mode):
    """Sensitivity must measure what PTQ/QAT deploy: on one Linear, quantized_alone's output equals torchao's real
    INT8 output (dynamic symmetric per-token activations for w8a8, weight-only for w8) within float rounding."""
    import copy

    from labkit.quant.ptq import quantize_dynamic_int8, quantize_weight_only_int8
    from labkit.quant.qat import prepare_qat

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 48)).eval()
    x = torch.randn(3, 16, 64) * 3 + 0.5  # shifted inputs: asymmetric and symmetric grids differ visibly
    with torch.no_grad():
        with quantized_alone(layer[0], mode):
            alone = layer(x)
        ptq = copy.deepcopy(layer)
        (quantize_dynamic_int8 if mode == "w8a8" else quantize_weight_only_int8)(ptq)
        real = ptq(x)
        qat = prepare_qat(copy.deepcopy(layer), activations="int8-dynamic" if mode == "w8a8" else None)
        fake = qat(x)
        floating = layer(x)
    tol = 1e-4 * floating.abs().max().item()
    assert (floating - real).abs().max() > 10 * tol  # INT8 visibly moves the output ...
    assert (alone - real).abs().max() <= tol  # ... and sensitivity sees exactly that move
    assert (alone - fake).abs().max() <= tol  # which is also what QAT trains against
