"""FlashAttention-2's algorithm in plain PyTorch, small and readable (slow: for teaching, not for speed).

Three ideas:
    tiling          Q, K, V are cut into blocks; only a block_q x block_k tile of scores exists at a time
                    (on the GPU it lives in on-chip SRAM), never the N x N matrix.
    online softmax  a running row maximum m and running denominator l let each new K/V block be folded in:
                    rescale the old partial output by exp(m_old - m_new), add the new block. The result equals
                    softmax(QK^T)V exactly (up to rounding).
    recomputation   the forward keeps only O and the row log-sum-exp L = m + log(l) (N numbers per head, not N^2);
                    the backward rebuilds each tile of P = exp(S - L) from Q, K and L instead of storing P.
"""

from __future__ import annotations

import math

import torch


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V with the full N x N matrix: the definition FlashAttention must match."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        n, m = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def online_softmax(x: torch.Tensor, block: int = 4) -> torch.Tensor:
    """softmax over the last dim, reading x one block of columns at a time with a running max and sum."""
    m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)  # running max
    l = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)  # running sum of exp(x - m)
    for start in range(0, x.shape[-1], block):
        xb = x[..., start:start + block]
        m_new = torch.maximum(m, xb.amax(dim=-1))
        l = l * torch.exp(m - m_new) + torch.exp(xb - m_new[..., None]).sum(dim=-1)
        m = m_new
    return torch.exp(x - m[..., None]) / l[..., None]  # a second pass only to write the probabilities out


def tiled_attention_forward(q, k, v, block_q: int = 16, block_k: int = 16, causal: bool = False):
    """FlashAttention-2 forward: (O, L) with L the log-sum-exp of each score row. Shapes [..., N, d]."""
    n, d = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=q.dtype, device=q.device)
    for qs in range(0, n, block_q):  # FA2 parallelises over query blocks (one thread block each)
        qb = q[..., qs:qs + block_q, :]
        rows = torch.arange(qs, qs + qb.shape[-2], device=q.device)
        m = torch.full(qb.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
        l = torch.zeros(qb.shape[:-1], dtype=q.dtype, device=q.device)
        acc = torch.zeros_like(qb)
        k_end = min(qs + qb.shape[-2], k.shape[-2]) if causal else k.shape[-2]
        for ks in range(0, k_end, block_k):  # causal: skip tiles entirely above the diagonal
            s = qb @ k[..., ks:ks + block_k, :].transpose(-2, -1) * scale  # one block_q x block_k tile
            if causal:
                cols = torch.arange(ks, ks + s.shape[-1], device=q.device)
                s = s.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            p = torch.exp(s - m_new[..., None])
            correction = torch.exp(m - m_new)
            l = l * correction + p.sum(dim=-1)
            acc = acc * correction[..., None] + p @ v[..., ks:ks + block_k, :]
            m = m_new
        out[..., qs:qs + block_q, :] = acc / l[..., None]  # FA2: divide once at the end, not per tile
        lse[..., qs:qs + block_q] = m + torch.log(l)
    return out, lse


def tiled_attention_backward(q, k, v, out, lse, grad_out, block_q: int = 16, block_k: int = 16,
                             causal: bool = False):
    """FlashAttention-2 backward: rebuild each tile of P = exp(S - L) from Q, K, L (recomputation) and
    accumulate dQ, dK, dV tile by tile. Nothing of size N x N is read or written."""
    n, d = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    delta = (grad_out * out).sum(dim=-1)  # rowsum(dO * O) = rowsum(P * dP), N numbers per head
    for ks in range(0, k.shape[-2], block_k):  # FA2's backward parallelises over key blocks
        kb, vb = k[..., ks:ks + block_k, :], v[..., ks:ks + block_k, :]
        cols = torch.arange(ks, ks + kb.shape[-2], device=q.device)
        q_start = (ks // block_q) * block_q if causal else 0
        for qs in range(q_start, n, block_q):
            qb, dob = q[..., qs:qs + block_q, :], grad_out[..., qs:qs + block_q, :]
            s = qb @ kb.transpose(-2, -1) * scale
            p = torch.exp(s - lse[..., qs:qs + block_q, None])  # recomputed, not stored by the forward
            if causal:
                rows = torch.arange(qs, qs + qb.shape[-2], device=q.device)
                p = p.masked_fill(cols[None, :] > rows[:, None], 0.0)
            dv[..., ks:ks + block_k, :] += p.transpose(-2, -1) @ dob
            dp = dob @ vb.transpose(-2, -1)
            ds = p * (dp - delta[..., qs:qs + block_q, None])
            dq[..., qs:qs + block_q, :] += ds @ kb * scale
            dk[..., ks:ks + block_k, :] += ds.transpose(-2, -1) @ qb * scale
    return dq, dk, dv


class TiledAttention(torch.autograd.Function):
    """Autograd wrapper: the forward saves only Q, K, V, O and L; the backward recomputes the tiles."""

    @staticmethod
    def forward(ctx, q, k, v, block_q=16, block_k=16, causal=False):
        out, lse = tiled_attention_forward(q, k, v, block_q, block_k, causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (block_q, block_k, causal)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = tiled_attention_backward(q, k, v, out, lse, grad_out, *ctx.config)
        return dq, dk, dv, None, None, None


def tiled_attention(q, k, v, block_q: int = 16, block_k: int = 16, causal: bool = False) -> torch.Tensor:
    """Differentiable tiled attention (forward and backward as in FlashAttention-2)."""
    return TiledAttention.apply(q, k, v, block_q, block_k, causal)


def saved_for_backward_elements(n: int, d: int, heads: int = 1) -> dict[str, int]:
    """Elements kept for the backward pass per batch item: standard attention (P) against FlashAttention (L)."""
    qkvo = 4 * heads * n * d
    return {"standard (Q,K,V,O + P)": qkvo + heads * n * n, "flash (Q,K,V,O + L)": qkvo + heads * n}
