"""The readable FlashAttention-2 (labkit.attention.tiled) against the N x N definition: forward, the three
gradients, causal and not, block sizes that do not divide N, fresh random inputs on every run."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.attention.tiled import (
    online_softmax,
    reference_attention,
    saved_for_backward_elements,
    tiled_attention,
    tiled_attention_forward,
)

# (N, d, block_q, block_k): equal blocks, blocks not dividing N, unequal blocks, one block bigger than N
SHAPES = [(32, 16, 8, 8), (37, 8, 16, 8), (29, 16, 8, 12), (11, 8, 16, 16), (50, 4, 7, 5)]


def _inputs(n: int, d: int, seed: int, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(seed)
    # float64 so "equal up to rounding" is tight; scores spread wide enough that the running max changes often
    q, k, v = (torch.randn(2, 3, n, d, generator=gen, dtype=torch.float64) * s for s in (2.0, 2.0, 1.0))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.fixture
def seed() -> int:
    """A fresh seed per test run (printed on failure through the test id of the assertion message)."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "d", "block_q", "block_k"), SHAPES)
def test_forward_matches_reference(n, d, block_q, block_k, causal, seed):
    q, k, v = _inputs(n, d, seed)
    out, lse = tiled_attention_forward(q, k, v, block_q, block_k, causal)
    ref = reference_attention(q, k, v, causal)
    assert torch.allclose(out, ref, atol=1e-10, rtol=1e-9), f"seed {seed}: max error {(out - ref).abs().max():.3g}"
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(lse, torch.logsumexp(scores, dim=-1), atol=1e-10), f"seed {seed}: log-sum-exp differs"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "d", "block_q", "block_k"), SHAPES)
def test_gradients_match_reference(n, d, block_q, block_k, causal, seed):
    q, k, v = _inputs(n, d, seed, requires_grad=True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=q.dtype)
    tiled_attention(q, k, v, block_q, block_k, causal).backward(grad_out)
    tiled = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    reference_attention(q, k, v, causal).backward(grad_out)
    for name, got, t in zip(("dQ", "dK", "dV"), tiled, (q, k, v)):
        err = (got - t.grad).abs().max()
        assert torch.allclose(got, t.grad, atol=1e-9, rtol=1e-8), f"seed {seed}: {name} max error {err:.3g}"


def test_gradcheck_small():
    """torch.autograd.gradcheck on the autograd wrapper (finite differences), causal, uneven blocks."""
    q, k, v = _inputs(7, 4, seed=3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: tiled_attention(a, b, c, 3, 2, True), (q, k, v))


@pytest.mark.parametrize("block", [1, 3, 4, 64])
def test_online_softmax_matches_softmax(block, seed):
    x = torch.randn(4, 5, 23, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10
    assert torch.allclose(online_softmax(x, block), torch.softmax(x, dim=-1), atol=1e-12)


def test_large_scores_do_not_overflow():
    """The running max keeps exp() finite where a naive exp(S) overflows (float32, scores ~ 1e3)."""
    q, k, v = (t.float() for t in _inputs(24, 8, seed=5))
    q, k = q * 30, k * 30
    out, _ = tiled_attention_forward(q, k, v, 8, 8)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, reference_attention(q, k, v), atol=1e-4)


def test_saved_elements():
    counts = saved_for_backward_elements(1024, 64, heads=2)
    assert counts["flash (Q,K,V,O + L)"] == 4 * 2 * 1024 * 64 + 2 * 1024
    assert counts["standard (Q,K,V,O + P)"] - counts["flash (Q,K,V,O + L)"] == 2 * 1024 * 1024 - 2 * 1024
