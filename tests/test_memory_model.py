"""The analytic memory model against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from labkit.attention.memory_model import (
    GIB,
    ModelShape,
    dtype_bytes,
    max_seq_len,
    memory_breakdown,
    memory_curves,
    predicted_peak_bytes,
)

# hidden 8, 2 layers, 2 heads of 4, 1 kv head, MLP 16, vocab 10, untied embeddings
SMALL = ModelShape(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)


def test_parameter_count_by_hand():
    # embed 80; per layer q 64 + k,v 64 + o 64 + mlp 384 + norms 16 = 592; x2 = 1184; final norm 8; lm_head 80
    assert SMALL.parameters() == 80 + 1184 + 8 + 80 == 1352
    tied = ModelShape(**{**SMALL.as_dict(), "tied_embeddings": True})
    assert tied.parameters() == 1352 - 80


def test_llama_2_7b_parameter_count_matches_the_published_one():
    assert ModelShape.named("llama-2-7b").parameters() == 6_738_415_616


def test_matches_a_built_model():
    from labkit.models import build_from_shape, parameter_count

    model = build_from_shape("tiny-llama", dtype=torch.float32, device="cpu")
    assert ModelShape.from_config(model.config).parameters() == parameter_count(model)


def test_breakdown_float32_by_hand():
    m = memory_breakdown(SMALL, seq_len=10, batch_size=1, dtype=torch.float32)
    assert m["weights"] == 1352 * 4
    # residual 10*8*4=320; busiest block = MLP 3*10*16*4=1920 (norm 960, attention 1760); logits 1*10*4=40
    assert m["activations"] == 320 + 1920 + 40
    # float32: masked scores 4 + softmax 4 (no cast copy) per element of 2 heads x 10 x 10; mask 10*10*4
    assert m["eager_scores"] == 2 * 100 * 8 + 400
    # keys and values: 2 * 2 layers * 10 tokens * 1 kv head * 4 dims * 4 bytes
    assert m["kv_cache"] == 640


def test_breakdown_bfloat16_counts_the_float32_copy():
    m = memory_breakdown(SMALL, seq_len=10, dtype=torch.bfloat16)
    # bf16 scores 2 + their float32 copy 4 + float32 softmax 4, 2 heads x 10 x 10; mask 10 x 10 x 2
    assert m["eager_scores"] == 2 * 100 * (2 + 4 + 4) + 100 * 2
    assert m["weights"] == 1352 * 2
    # float16 on CUDA: fused half-to-float softmax, then the cast: 2 + 4 + 2
    assert memory_breakdown(SMALL, seq_len=10, dtype=torch.float16)["eager_scores"] == 2 * 100 * 8 + 100 * 2


def test_quadratic_against_linear():
    a, b = memory_breakdown(SMALL, 1000), memory_breakdown(SMALL, 2000)
    assert b["eager_scores"] == 4 * a["eager_scores"]
    assert b["kv_cache"] == 2 * a["kv_cache"]
    logits = 10 * 2
    assert b["activations"] - logits == 2 * (a["activations"] - logits)


def test_predicted_peak_and_curves():
    shape = ModelShape.named("llama-2-7b")
    eager, flash = (predicted_peak_bytes(shape, 8192, b) for b in ("eager", "fa2"))
    assert eager > 2 * flash  # the lesson at 8k: flash holds less than half
    assert predicted_peak_bytes(shape, 8192, "sdpa") == flash
    curves = memory_curves(shape, [1024, 2048])
    assert curves["seq_len"] == [1024, 2048]
    assert curves["total_eager"][1] == pytest.approx(eager_at(shape, 2048) / GIB)
    assert curves["weights"][0] == curves["weights"][1] == pytest.approx(6_738_415_616 * 2 / GIB)


def eager_at(shape, n):
    return predicted_peak_bytes(shape, n, "eager")


def test_max_seq_len_is_the_boundary():
    shape = ModelShape.named("llama-2-7b")
    budget = 80 * GIB
    n = max_seq_len(shape, budget, "eager")
    assert predicted_peak_bytes(shape, n, "eager") <= budget < predicted_peak_bytes(shape, n + 1, "eager")
    assert max_seq_len(shape, budget, "fa2") > 16 * n


def test_dtype_bytes():
    assert dtype_bytes(torch.bfloat16) == dtype_bytes("float16") == 2
    assert dtype_bytes(4) == 4
