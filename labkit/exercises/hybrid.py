"""Checks of notebook 03's exercises, each measured on the learner's own model: the weight bytes of the feed-forward
layers in INT8, the perplexity cost of putting the attention projections in INT8 too, and the tied-head trap."""

from __future__ import annotations

import copy

import torch
from torch import nn

from labkit.exercises import answer_value, claim
from labkit.quant.selection import FEED_FORWARD, resolve_layers

BLOCK_LINEARS = r"\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"
"""Every Linear of the decoder blocks: the four attention projections and the three feed-forward ones."""


def int8_copy(model: nn.Module, layers: list[str], mode: str, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` in `dtype` with `layers` in INT8 by PTQ: "w8" weight-only, "w8a8" with dynamic per-token
    INT8 activations (the lesson's `ptq-w8` / `ptq-w8a8` variants)."""
    from labkit.quant.ptq import quantize_dynamic_int8, quantize_weight_only_int8

    out = copy.deepcopy(model).to(dtype).eval()
    {"w8": quantize_weight_only_int8, "w8a8": quantize_dynamic_int8}[mode](out, layers)
    return out


def _mb(model: nn.Module) -> float:
    from labkit.quant.size import weight_bytes

    return weight_bytes(model) / 1e6


def check_weight_prediction(prediction_mb, *, model: nn.Module, dtype: torch.dtype) -> None:
    """`prediction_mb`: the weight MB of `model` with its feed-forward layers in INT8 weight-only (1 byte a weight,
    a float32 scale per output row) and every other weight in `dtype`, the tied head counted once."""
    predicted = float(answer_value(prediction_mb, "ex1_prediction_mb"))
    measured = _mb(int8_copy(model, resolve_layers(model, FEED_FORWARD), "w8", dtype))
    width = torch.finfo(dtype).bits // 8
    claim("exercise 1: predicted / measured MB", round(predicted / measured, 3), 1.0, tol=0.01,
          hint=f"1 byte per feed-forward weight plus 4 bytes (a float32 scale) per output row; every other weight at "
               f"{width} bytes ({dtype}); the tied lm_head is the embedding tensor, counted once")


def check_all_block_linears(layers, ppl, *, model: nn.Module, dtype: torch.dtype, blocks: torch.Tensor,
                            feed_forward_ppl: float, batch_size: int = 4) -> None:
    """`layers`: every Linear of the blocks (7 per block), the tied `lm_head` left out; `ppl`: the perplexity on
    `blocks` of the PTQ w8a8 model of those layers, which the check builds and measures again. Then the claim the
    exercise asks about: it costs more perplexity than `feed_forward_ppl` (PTQ w8a8 of the feed-forward layers only,
    measured in this run)."""
    from labkit.lm import perplexity

    names = list(answer_value(layers, "ex2_layers"))
    value = float(answer_value(ppl, "ex2_ppl"))
    want = resolve_layers(model, BLOCK_LINEARS)
    claim("exercise 2: lm_head left out", "lm_head" in names, False,
          hint="lm_head is the embedding tensor (tied): quantizing it adds an INT8 copy instead of saving bytes")
    missing, extra = sorted(set(want) - set(names)), sorted(set(names) - set(want))
    claim("exercise 2: layers missing from / not in the blocks' Linears", (len(missing), len(extra)), (0, 0),
          hint=f"7 Linears per block: self_attn q/k/v/o_proj and mlp gate/up/down_proj; missing e.g. {missing[:2]}, "
               f"not expected e.g. {extra[:2]}")
    measured = perplexity(int8_copy(model, want, "w8a8", dtype), blocks, batch_size)
    claim("exercise 2: your perplexity / the all-Linear PTQ w8a8 model's", round(value / measured, 4), 1.0,
          tol=0.002, hint="PTQ w8a8 of ex2_layers (hy.make_variant(model, 'ptq-w8a8', cfg, ex2_layers)), then "
                          "lm.perplexity on test_blocks")
    claim("exercise 2: all the blocks' Linears in INT8 cost more perplexity than the feed-forward ones alone",
          round(measured, 3), round(float(feed_forward_ppl), 3), op=">",
          hint="more quantized layers add more error; compare with the ptq-w8a8 row of the lesson's table")


def check_tied_head_growth(growth_mb, *, model: nn.Module, dtype: torch.dtype) -> None:
    """`growth_mb`: how many MB the weights of `model` (in `dtype`) grow when only its tied `lm_head` is quantized
    to INT8 weight-only."""
    predicted = float(answer_value(growth_mb, "ex3_growth_mb"))
    float_mb = _mb(copy.deepcopy(model).to(dtype))
    growth = _mb(int8_copy(model, ["lm_head"], "w8", dtype)) - float_mb
    claim("exercise 3: the model got bigger (MB)", round(growth, 3), 0.0, op=">",
          hint="the head must be tied to the embedding for this exercise")
    claim("exercise 3: predicted / measured growth", round(predicted / growth, 3), 1.0, tol=0.02,
          hint="the head gets its own INT8 copy (1 byte per weight plus a 4-byte scale per row) while the "
               "embedding keeps the float tensor the two shared: nothing is saved, the copy is added")


__all__ = ["BLOCK_LINEARS", "check_all_block_linears", "check_tied_head_growth", "check_weight_prediction",
           "int8_copy"]
