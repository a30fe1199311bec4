"""labkit.attention.tiling: the explainer's step-by-step forward is softmax attention at its last step, its running
statistics are what they claim to be, and the HBM counts and tile kinds follow the loops."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.attention import tiled, tiling


@pytest.mark.parametrize(("n", "bq", "bk", "causal"), [(24, 8, 4, False), (24, 8, 4, True), (37, 16, 8, True),
                                                       (16, 16, 16, False), (40, 8, 16, True)])
def test_the_trace_ends_at_softmax_attention_and_tracks_the_running_max(n, bq, bk, causal):
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(n, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    steps = tiling.forward_trace(q, k, v, bq, bk, causal)
    assert len(steps) == math.ceil(n / bk)
    torch.testing.assert_close(steps[-1].out, tiled.reference_attention(q, k, v, causal), atol=1e-12, rtol=0)
    scores = q @ k.T / math.sqrt(8)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    for st in steps:
        seen = scores[:, :st.cols[1]]
        torch.testing.assert_close(st.m, seen.amax(-1))
        torch.testing.assert_close(st.l, torch.exp(seen - st.m[:, None]).sum(-1))
    assert steps[0].rescaled.all() and steps[-1].computed.sum() == (
        sum(tiling.causal_tile_counts(n, bq, bk)) if causal else steps[-1].computed.numel())


def test_hbm_counts():
    t = tiling.hbm_traffic(64, 8, 16, 16)
    assert t["naive"] == 4 * 64 * 64 + 4 * 64 * 8
    assert t["tiled"] == 64 * 8 + 4 * 2 * 64 * 8 + 64 * 8 + 64 and t["tiles"] == 16
    first = tiling.hbm_traffic(64, 8, 16, 16, key_blocks=1)
    assert first["tiles"] == 4 and first["tiled_parts"]["write O"] == 0
    causal = tiling.hbm_traffic(64, 8, 16, 16, causal=True)
    assert causal["tiles"] == 10 and causal["naive"] == t["naive"]  # eager writes the whole N x N anyway
    with pytest.raises(ValueError, match="block_q=0"):
        tiling.hbm_traffic(64, 8, 0)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        tiling.forward_trace(torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), 4, 4)


def test_tile_kinds_of_a_small_causal_grid():
    S, M, U = tiling.SKIPPED, tiling.MASKED, tiling.UNMASKED
    assert tiling.causal_tile_kinds(10, 4, 2).tolist() == [[M, M, S, S, S], [U, U, M, M, S], [U, U, U, U, M]]
