"""Which grid do a model's weights already sit on, and how much does INT8 rounding add?

The embedded SmolLM2-135M comes from a 4-bit GGUF file (Q4_1: blocks of 32 weights, 16 levels each), dequantized
to float. Its "float" weights therefore already sit on a 4-bit grid. This module measures that, per Linear layer:

    max_distinct        most distinct values in any block of 32 consecutive weights of a row (<= 16: a 4-bit grid;
                        a float model has 32)
    int8_error          relative error ||W - Q8(W)|| / ||W|| of INT8 symmetric per-row rounding, as PTQ/QAT use
    int8_error_random   the same for random weights of the same shape (Gaussian with each row's mean and std)
    q4_error_random     the error a Q4_1-style 4-bit rounding (blocks of 32, 16 levels from min to max) puts on
                        those random weights: the size of the rounding the GGUF weights already went through
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from labkit.quant.selection import LayerSelection, resolve_layers

BLOCK = 32  # GGUF Q4_0/Q4_1/Q8_0 block length


def distinct_per_block(weight: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Number of distinct values in each block of `block` consecutive weights along the rows (ragged tail dropped)."""
    w = weight.detach().float()
    cols = (w.shape[-1] // block) * block
    if cols == 0:
        raise ValueError(f"rows of {w.shape[-1]} weights are shorter than one block of {block}")
    blocks = w[..., :cols].reshape(-1, block).sort(dim=-1).values
    return 1 + (blocks[:, 1:] != blocks[:, :-1]).sum(dim=-1)


def int8_rounding_error(weight: torch.Tensor) -> float:
    """||W - Q(W)|| / ||W|| for INT8 symmetric per-row rounding (scale = row absmax / 127.5, as torchao's Int8Tensor)."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=-1, keepdim=True) / 127.5).clamp(min=torch.finfo(torch.float32).eps)
    q = torch.clamp(torch.round(w / scale), -128, 127) * scale
    return float((w - q).norm() / w.norm())


def q4_1_round(weight: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Q4_1-style rounding: each block of `block` weights on 16 levels from its min to its max (ragged tail kept)."""
    w = weight.detach().float()
    cols = (w.shape[-1] // block) * block
    b = w[..., :cols].reshape(-1, block)
    lo, hi = b.amin(dim=-1, keepdim=True), b.amax(dim=-1, keepdim=True)
    step = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).eps)
    out = w.clone()
    out[..., :cols] = (torch.round((b - lo) / step).clamp(0, 15) * step + lo).reshape(*w.shape[:-1], cols)
    return out


def _random_like(weight: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    w = weight.detach().float()
    noise = torch.randn(w.shape, generator=gen)
    return noise * w.std(dim=-1, keepdim=True) + w.mean(dim=-1, keepdim=True)


@torch.no_grad()
def weight_grid_table(model: nn.Module, layers: LayerSelection = None, seed: int = 0,
                      max_rows: int | None = 256) -> pd.DataFrame:
    """One row per selected Linear: max_distinct, int8_error, int8_error_random, q4_error_random (see module doc).

    `max_rows`: measure on that many randomly chosen rows of each weight (None: all; every row is a sample of
    the same grid, and a few hundred keep the whole of SmolLM2 to seconds)."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    rows = []
    for name in resolve_layers(model, layers):
        w = modules[name].weight.detach().float()
        if max_rows is not None and w.shape[0] > max_rows:
            w = w[torch.randperm(w.shape[0], generator=gen)[:max_rows]]
        rand = _random_like(w, gen)
        rows.append({
            "name": name, "shape": tuple(modules[name].weight.shape), "max_distinct": int(distinct_per_block(w).max()),
            "int8_error": int8_rounding_error(w), "int8_error_random": int8_rounding_error(rand),
            "q4_error_random": float((rand - q4_1_round(rand)).norm() / rand.norm()),
        })
    return pd.DataFrame(rows)


def describe_weight_grid(table: pd.DataFrame, levels: int = 16) -> str:
    """Two sentences with the numbers of `weight_grid_table`: which grid, and how INT8 compares."""
    coarse = table["max_distinct"] <= levels
    if coarse.all():
        grid = f"all {len(table)} Linear layers have at most {levels} distinct values in any block of {BLOCK} weights"
    elif coarse.any():
        others = ", ".join(table.loc[~coarse, "name"].head(3))
        grid = (f"{int(coarse.sum())} of {len(table)} Linear layers have at most {levels} distinct values in any block "
                f"of {BLOCK} weights (not: {others})")
    else:
        grid = f"none of {len(table)} Linear layers has {levels} or fewer distinct values per block of {BLOCK} weights"
    verdict = (f": they already sit on a {(levels - 1).bit_length()}-bit grid" if coarse.any()
               else ": no coarse grid, a float model")
    return (f"{grid}{verdict}. INT8 per-row rounding changes them by {100 * table['int8_error'].median():.2f}% "
            f"(median relative error; random weights of the same shapes: "
            f"{100 * table['int8_error_random'].median():.2f}%), against "
            f"{100 * table['q4_error_random'].median():.1f}% for a 4-bit Q4_1 rounding of such weights.")


__all__ = [
    "describe_weight_grid",
    "distinct_per_block",
    "int8_rounding_error",
    "q4_1_round",
    "weight_grid_table",
]
