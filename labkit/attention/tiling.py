"""FlashAttention's tiling made visible: the state after each key/value tile, the tiles a causal forward visits,
and the HBM traffic of tiled against naive attention (for the explainer widget, its figures and the exercises).

    forward_trace      every query block folds key/value block j at step j (FA2 runs the query blocks in
                       parallel, so they advance together): the running max m, denominator l and the rescaled
                       output acc / l after each step; the last step is softmax attention itself
    causal_tile_kinds  which block_q x block_k tiles a causal forward skips, masks (the diagonal) or runs
                       without a mask, exactly as the Triton kernel's two inner loops visit them
    hbm_traffic        elements read and written in GPU memory (HBM): naive attention writes and reads the
                       N x N scores and probabilities; the tiled forward reads Q once, each visited K/V tile once
                       per query block, and writes O and the log-sum-exp
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SKIPPED, MASKED, UNMASKED = 0, 1, 2
"""Tile kinds of a causal forward: above the diagonal (never computed), on it (masked), left of it (no mask)."""


def _check_blocks(n: int, block_q: int, block_k: int) -> None:
    for name, value in (("n", n), ("block_q", block_q), ("block_k", block_k)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive whole number")


def tile_grid(n: int, block_q: int, block_k: int) -> tuple[int, int]:
    """(query blocks, key blocks) of an n x n score matrix cut into block_q x block_k tiles."""
    _check_blocks(n, block_q, block_k)
    return math.ceil(n / block_q), math.ceil(n / block_k)


def causal_tile_kinds(n: int, block_q: int, block_k: int) -> torch.Tensor:
    """[query blocks, key blocks] of SKIPPED / MASKED / UNMASKED for a causal forward of one head.

    A tile is computed when it holds at least one visible score (column <= row). It is masked when it also holds
    a hidden one, or starts on or right of the diagonal (the Triton kernel's second loop, key blocks from the query
    block's first row on); the tiles wholly left of the diagonal run the mask-free loop."""
    tq, tk = tile_grid(n, block_q, block_k)
    kinds = torch.full((tq, tk), SKIPPED, dtype=torch.int64)
    for i in range(tq):
        first_row, last_row = i * block_q, min((i + 1) * block_q, n) - 1
        for j in range(tk):
            first_col, last_col = j * block_k, min((j + 1) * block_k, n) - 1
            if first_col > last_row:
                continue  # every score hidden: never computed
            kinds[i, j] = MASKED if last_col > first_row or first_col >= first_row else UNMASKED
    return kinds


def causal_tile_counts(n: int, block_q: int, block_k: int) -> tuple[int, int]:
    """(unmasked, masked) tiles a causal forward of one head computes (`causal_tile_kinds` counted)."""
    kinds = causal_tile_kinds(n, block_q, block_k)
    return int((kinds == UNMASKED).sum()), int((kinds == MASKED).sum())


def hbm_traffic(n: int, d: int, block_q: int, block_k: int | None = None, causal: bool = False,
                key_blocks: int | None = None) -> dict[str, int]:
    """Elements read + written in HBM by one head's attention forward (multiply by the dtype's bytes).

    naive: S = Q K^T reads Q, K and writes S; softmax reads S and writes P; P V reads P, V and writes O:
           4 N d + 4 N^2. (Masking does not shrink it: the N x N tensors are written whole.)
    tiled: Q read once (N d), each computed tile reads its K and V block (2 block_k d), O written once (N d),
           and the log-sum-exp L (N numbers) for the backward. `key_blocks` counts only the first
           `key_blocks` steps of the tiled forward (the explainer's steps; O and L are written after the last).
    """
    block_k = block_q if block_k is None else block_k
    tq, tk = tile_grid(n, block_q, block_k)
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d={d!r} must be a positive whole number")
    kinds = causal_tile_kinds(n, block_q, block_k) if causal else torch.full((tq, tk), UNMASKED)
    widths = [min((j + 1) * block_k, n) - j * block_k for j in range(tk)]
    steps = tk if key_blocks is None else max(0, min(int(key_blocks), tk))
    kv_per_tile = [2 * widths[j] * d for i in range(tq) for j in range(steps) if kinds[i, j] != SKIPPED]
    done = steps == tk
    naive = {"read Q, K": 2 * n * d, "write S": n * n, "read S, write P": 2 * n * n, "read P, V": n * n + n * d,
             "write O": n * d}
    tiled = {"read Q": n * d, "read K, V tiles": sum(kv_per_tile), "write O": n * d if done else 0,
             "write L": n if done else 0}
    return {"naive": sum(naive.values()), "tiled": sum(tiled.values()), "naive_parts": naive, "tiled_parts": tiled,
            "tiles": len(kv_per_tile)}


@dataclass
class TileStep:
    """The state of the tiled forward after key/value block `step` was folded into every query block."""

    step: int
    cols: tuple[int, int]          # the key columns [start, stop) of this step's tiles
    m: torch.Tensor                # [N] running row maximum of the scores seen so far
    l: torch.Tensor                # [N] running denominator, sum of exp(s - m) over those scores
    out: torch.Tensor              # [N, d] acc / l: the output if the row ended here
    computed: torch.Tensor         # [query blocks, key blocks] bool: tiles computed up to this step
    rescaled: torch.Tensor         # [N] bool: rows whose maximum rose at this step (acc and l were rescaled)


def forward_trace(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_k: int,
                  causal: bool = False) -> list[TileStep]:
    """The tiled forward of one head (q, k, v of shape [N, d]), one `TileStep` per key/value block.

    The same arithmetic as `tiled.tiled_attention_forward`; the last step's `out` is softmax attention."""
    if q.ndim != 2 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be one head's [N, d] each; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    n, d = q.shape
    tq, tk = tile_grid(n, block_q, block_k)
    kinds = causal_tile_kinds(n, block_q, block_k) if causal else torch.full((tq, tk), UNMASKED)
    scores = q @ k.T / math.sqrt(d)
    m = torch.full((n,), float("-inf"), dtype=q.dtype)
    l = torch.zeros(n, dtype=q.dtype)
    acc = torch.zeros(n, d, dtype=q.dtype)
    computed = torch.zeros(tq, tk, dtype=torch.bool)
    rows = torch.arange(n)
    steps = []
    for j in range(tk):
        ks, ke = j * block_k, min((j + 1) * block_k, n)
        rescaled = torch.zeros(n, dtype=torch.bool)
        for i in range(tq):
            if kinds[i, j] == SKIPPED:
                continue
            qs, qe = i * block_q, min((i + 1) * block_q, n)
            s = scores[qs:qe, ks:ke]
            if kinds[i, j] == MASKED:
                s = s.masked_fill(torch.arange(ks, ke)[None, :] > rows[qs:qe, None], float("-inf"))
            m_new = torch.maximum(m[qs:qe], s.amax(dim=-1))
            p = torch.exp(s - m_new[:, None])
            correction = torch.exp(m[qs:qe] - m_new)
            rescaled[qs:qe] = m_new > m[qs:qe]
            l[qs:qe] = l[qs:qe] * correction + p.sum(dim=-1)
            acc[qs:qe] = acc[qs:qe] * correction[:, None] + p @ v[ks:ke]
            m[qs:qe] = m_new
            computed[i, j] = True
        steps.append(TileStep(j, (ks, ke), m.clone(), l.clone(), acc / l[:, None], computed.clone(), rescaled))
    return steps


__all__ = ["MASKED", "SKIPPED", "UNMASKED", "TileStep", "causal_tile_counts", "causal_tile_kinds", "forward_trace",
           "hbm_traffic", "tile_grid"]
