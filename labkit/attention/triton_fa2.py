"""FlashAttention-2 as Triton kernels: the algorithm of `labkit.attention.tiled`, compiled for the GPU.

Read it beside tiled.py: the names are the same (q, k, v, qb, kb, vb, s, p, m, m_new, l, correction, acc, lse,
delta, dp, ds, dq, dk, dv, rows, cols, block_q, block_k). What changes on a GPU:

    one program per tile    tiled.py's outer Python loop (`for qs in range(0, n, block_q)`) becomes the launch
                            grid: every query block of every head is its own program, all running at once.
    base 2                  exp(x) = exp2(x * log2(e)); log2(e) is folded into the scale once (`qk_scale`), so
                            the inner loop does one multiply and one exp2 per score. `lse` is kept in base 2.
    causal split            blocks wholly below the diagonal need no mask; only the diagonal blocks do. Each
                            loop is run twice with a compile-time flag, so the common case has no mask code.
    GQA                     query head h reads key/value head h // group (fewer K/V heads than query heads).
    ragged N                a sequence that is not a multiple of the block loads zeros past its end; only the
                            forward's scores need masking there (padded rows and columns add exact zeros in the
                            backward, see `_attention_bwd_dkdv`).

Tensors are [batch, heads, N, head_dim] with any strides (the last one 1), fp16 or bf16 (fp32 too, for tests).
Kernels: `_attention_fwd` (forward), `_attention_bwd_delta` (delta = rowsum(dO * O)), `_attention_bwd_dkdv`
(one program per key block, like tiled.py's backward) and `_attention_bwd_dq` (one program per query block).
The autograd Function is in `labkit.attention.triton_fa2_backend`; `labkit.attention.backends` registers it with
transformers as the backend "triton-fa2".
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as err:  # macOS, Windows: no Triton wheels; labkit and the CPU lessons run without this module
    raise ImportError(
        "labkit.attention.triton_fa2 needs Triton, which is not installed here (Triton ships for Linux on x86_64 "
        "and aarch64 only). Everything else in labkit runs without it: use the 'sdpa' or 'fa2' backends, "
        "labkit.attention.tiled for the same algorithm in PyTorch, and notebook 02b for the committed H100 "
        f"results. ({err})") from err

LOG2_E = 1.4426950408889634  # exp(x) == exp2(x * LOG2_E)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # Triton's CPU interpreter (tests)
_DOT_IN_FP32 = tl.constexpr(INTERPRET)


@triton.jit
def _dot(a, b):
    """tl.dot, except in the CPU interpreter, which multiplies bfloat16 wrongly (Triton 3.7): there, in float32."""
    if _DOT_IN_FP32:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b)


# ---------------------------------------------------------------------------------------------------------------
# forward


@triton.jit
def _attention_fwd_inner(acc, m, l, qb, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, lo, hi, n_ctx, qk_scale,
               BLOCK_K: tl.constexpr, MASK_DIAG: tl.constexpr, MASK_TAIL: tl.constexpr):
    """tiled.py's inner loop `for ks in range(...)`: fold key/value blocks lo..hi into (acc, m, l)."""
    for ks in range(lo, hi, BLOCK_K):
        cols = ks + tl.arange(0, BLOCK_K)
        if MASK_TAIL:  # past the end of the sequence: load zeros
            kb = tl.load(k_ptrs + ks * stride_kn, mask=cols[:, None] < n_ctx, other=0.0)
            vb = tl.load(v_ptrs + ks * stride_vn, mask=cols[:, None] < n_ctx, other=0.0)
        else:
            kb = tl.load(k_ptrs + ks * stride_kn)
            vb = tl.load(v_ptrs + ks * stride_vn)
        s = _dot(qb, tl.trans(kb)) * qk_scale  # S = Q K^T * scale, in base-2 units: one block_q x block_k tile
        if MASK_DIAG:  # causal: a query row sees keys up to its own position
            s = tl.where(cols[None, :] <= rows[:, None], s, float("-inf"))
        if MASK_TAIL:
            s = tl.where(cols[None, :] < n_ctx, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))  # running row maximum
        p = tl.math.exp2(s - m_new[:, None])  # P~ = exp(S - m_new)
        correction = tl.math.exp2(m - m_new)  # exp(m_old - m_new): rescales what was summed so far
        l = l * correction + tl.sum(p, 1)
        acc = acc * correction[:, None] + _dot(p.to(vb.dtype), vb)  # O~ = diag(correction) O~ + P~ V
        m = m_new
    return acc, m, l


@triton.jit
def _attention_fwd(Q, K, V, Out, Lse,
         stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
         stride_ob, stride_oh, stride_on, heads, group, n_ctx, qk_scale, n_class,
         HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, CAUSAL: tl.constexpr,
         EVEN_N: tl.constexpr):
    """One program = one query block of one (batch, head): tiled.py's `for qs ...` body. Writes O and lse."""
    q_block, bh = tl.program_id(0), tl.program_id(1)
    batch, head = bh // heads, bh % heads
    kv_head = head // group  # GQA: `group` query heads share one key/value head
    qs = q_block * BLOCK_Q
    rows = qs + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)
    key_rows = tl.arange(0, BLOCK_K)
    q_ptrs = Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qn + dims[None, :]
    k_ptrs = K + batch * stride_kb + kv_head * stride_kh + key_rows[:, None] * stride_kn + dims[None, :]
    v_ptrs = V + batch * stride_vb + kv_head * stride_vh + key_rows[:, None] * stride_vn + dims[None, :]

    # step 1: load the query block once; it stays in registers for the whole loop
    if EVEN_N:
        qb = tl.load(q_ptrs)
    else:
        qb = tl.load(q_ptrs, mask=rows[:, None] < n_ctx, other=0.0)
    m = tl.full([BLOCK_Q], float("-inf"), tl.float32)  # running max (base 2)
    l = tl.zeros([BLOCK_Q], tl.float32)  # running denominator
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)  # un-normalised output O~

    # step 2: fold in key/value blocks
    if CAUSAL:
        # 2a: blocks left of the diagonal, every score visible: no mask (needs BLOCK_Q % BLOCK_K == 0)
        acc, m, l = _attention_fwd_inner(acc, m, l, qb, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, 0, qs, n_ctx,
                               qk_scale, BLOCK_K, False, False)
        # 2b: the diagonal blocks, masked (keys past n_ctx are above the diagonal of every real row)
        acc, m, l = _attention_fwd_inner(acc, m, l, qb, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, qs,
                               tl.minimum(qs + BLOCK_Q, n_ctx), n_ctx, qk_scale, BLOCK_K, True, not EVEN_N)
    else:
        acc, m, l = _attention_fwd_inner(acc, m, l, qb, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, 0, n_ctx, n_ctx,
                               qk_scale, BLOCK_K, False, not EVEN_N)

    # step 3: normalise once at the end (FA2), and keep lse = m + log2(l) for the backward
    out = acc / l[:, None]
    lse = m + tl.math.log2(l)
    o_ptrs = Out + batch * stride_ob + head * stride_oh + rows[:, None] * stride_on + dims[None, :]
    lse_ptrs = Lse + bh * n_ctx + rows
    if EVEN_N:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty))
        tl.store(lse_ptrs, lse)
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=rows[:, None] < n_ctx)
        tl.store(lse_ptrs, lse, mask=rows < n_ctx)


# ---------------------------------------------------------------------------------------------------------------
# backward


@triton.jit
def _attention_bwd_delta(Out, dOut, Delta, stride_ob, stride_oh, stride_on, stride_db, stride_dh, stride_dn,
                         heads, n_ctx,
               HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr):
    """delta = rowsum(dO * O) (= rowsum(P * dP)): N numbers per head, read by both backward kernels."""
    q_block, bh = tl.program_id(0), tl.program_id(1)
    batch, head = bh // heads, bh % heads
    rows = q_block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)
    keep = rows[:, None] < n_ctx
    out = tl.load(Out + batch * stride_ob + head * stride_oh + rows[:, None] * stride_on + dims[None, :],
                  mask=keep, other=0.0)
    dout = tl.load(dOut + batch * stride_db + head * stride_dh + rows[:, None] * stride_dn + dims[None, :],
                   mask=keep, other=0.0)
    tl.store(Delta + bh * n_ctx + rows, tl.sum(out.to(tl.float32) * dout.to(tl.float32), 1), mask=rows < n_ctx)


@triton.jit
def _attention_bwd_dkdv_inner(dk, dv, kb, vb, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qn, stride_don, cols, lo, hi,
                    n_ctx, qk_scale, BLOCK_Q: tl.constexpr, MASK_DIAG: tl.constexpr, EVEN_N: tl.constexpr):
    """tiled.py's backward inner loop `for qs ...` for one key block, computed transposed (keys x queries):
    P^T, dP^T and dS^T have the key block as rows, so dK and dV accumulate without transposing them back."""
    for qs in range(lo, hi, BLOCK_Q):
        rows = qs + tl.arange(0, BLOCK_Q)
        if EVEN_N:
            qb = tl.load(q_ptrs + qs * stride_qn)
            dob = tl.load(do_ptrs + qs * stride_don)
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        else:  # rows past n_ctx load q = dO = delta = 0, so their P^T dO and dS^T Q terms are exactly 0
            qb = tl.load(q_ptrs + qs * stride_qn, mask=rows[:, None] < n_ctx, other=0.0)
            dob = tl.load(do_ptrs + qs * stride_don, mask=rows[:, None] < n_ctx, other=0.0)
            lse = tl.load(lse_ptr + rows, mask=rows < n_ctx, other=0.0)
            delta = tl.load(delta_ptr + rows, mask=rows < n_ctx, other=0.0)
        s_t = _dot(kb, tl.trans(qb))  # S^T = K Q^T (unscaled)
        p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])  # P^T = exp(S^T - L): recomputed, not stored
        if MASK_DIAG:
            p_t = tl.where(cols[:, None] <= rows[None, :], p_t, 0.0)
        dv += _dot(p_t.to(dob.dtype), dob)  # dV += P^T dO
        dp_t = _dot(vb, tl.trans(dob))  # dP^T = V dO^T
        ds_t = p_t * (dp_t - delta[None, :])  # dS^T = P^T * (dP^T - delta)
        dk += _dot(ds_t.to(qb.dtype), qb)  # dK += dS^T Q (times the scale, applied once at the end)
    return dk, dv


@triton.jit
def _attention_bwd_dkdv(Q, K, V, dOut, Lse, Delta, dK, dV,
              stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
              stride_dob, stride_doh, stride_don, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh,
              stride_dvn, heads, kv_heads, group, n_ctx, scale, qk_scale, n_class,
              HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, CAUSAL: tl.constexpr,
              EVEN_N: tl.constexpr):
    """One program = one key/value block of one (batch, kv head): tiled.py's backward `for ks ...` body.
    With GQA it loops over the `group` query heads that read this K/V head, so dK, dV need no atomics."""
    k_block, bkv = tl.program_id(0), tl.program_id(1)
    batch, kv_head = bkv // kv_heads, bkv % kv_heads
    ks = k_block * BLOCK_K
    cols = ks + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, HEAD_DIM)
    q_rows = tl.arange(0, BLOCK_Q)
    k_ptrs = K + batch * stride_kb + kv_head * stride_kh + cols[:, None] * stride_kn + dims[None, :]
    v_ptrs = V + batch * stride_vb + kv_head * stride_vh + cols[:, None] * stride_vn + dims[None, :]
    if EVEN_N:
        kb, vb = tl.load(k_ptrs), tl.load(v_ptrs)
    else:  # keys past n_ctx load 0; their dK, dV rows are computed but never stored
        kb = tl.load(k_ptrs, mask=cols[:, None] < n_ctx, other=0.0)
        vb = tl.load(v_ptrs, mask=cols[:, None] < n_ctx, other=0.0)
    dk = tl.zeros([BLOCK_K, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_K, HEAD_DIM], tl.float32)
    for g in range(group):
        head = kv_head * group + g
        q_ptrs = Q + batch * stride_qb + head * stride_qh + q_rows[:, None] * stride_qn + dims[None, :]
        do_ptrs = dOut + batch * stride_dob + head * stride_doh + q_rows[:, None] * stride_don + dims[None, :]
        lse_ptr = Lse + (batch * heads + head) * n_ctx
        delta_ptr = Delta + (batch * heads + head) * n_ctx
        if CAUSAL:
            # the diagonal query blocks (masked; needs BLOCK_K % BLOCK_Q == 0), then all rows below (no mask)
            dk, dv = _attention_bwd_dkdv_inner(dk, dv, kb, vb, q_ptrs, do_ptrs, lse_ptr, delta_ptr,
                                               stride_qn, stride_don,
                                     cols, ks, ks + BLOCK_K, n_ctx, qk_scale, BLOCK_Q, True, EVEN_N)
            dk, dv = _attention_bwd_dkdv_inner(dk, dv, kb, vb, q_ptrs, do_ptrs, lse_ptr, delta_ptr,
                                               stride_qn, stride_don,
                                     cols, ks + BLOCK_K, n_ctx, n_ctx, qk_scale, BLOCK_Q, False, EVEN_N)
        else:
            dk, dv = _attention_bwd_dkdv_inner(dk, dv, kb, vb, q_ptrs, do_ptrs, lse_ptr, delta_ptr,
                                               stride_qn, stride_don,
                                     cols, 0, n_ctx, n_ctx, qk_scale, BLOCK_Q, False, EVEN_N)
    dk_ptrs = dK + batch * stride_dkb + kv_head * stride_dkh + cols[:, None] * stride_dkn + dims[None, :]
    dv_ptrs = dV + batch * stride_dvb + kv_head * stride_dvh + cols[:, None] * stride_dvn + dims[None, :]
    dk = dk * scale  # S = Q K^T * scale, so dK = dS^T Q * scale
    if EVEN_N:
        tl.store(dk_ptrs, dk.to(dK.dtype.element_ty))
        tl.store(dv_ptrs, dv.to(dV.dtype.element_ty))
    else:
        tl.store(dk_ptrs, dk.to(dK.dtype.element_ty), mask=cols[:, None] < n_ctx)
        tl.store(dv_ptrs, dv.to(dV.dtype.element_ty), mask=cols[:, None] < n_ctx)


@triton.jit
def _attention_bwd_dq_inner(dq, qb, dob, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, lo, hi, n_ctx,
                            qk_scale,
                  BLOCK_K: tl.constexpr, MASK_DIAG: tl.constexpr, EVEN_N: tl.constexpr):
    """dQ for one query block: recompute P tile by tile and accumulate dS K."""
    for ks in range(lo, hi, BLOCK_K):
        cols = ks + tl.arange(0, BLOCK_K)
        if EVEN_N:
            kb = tl.load(k_ptrs + ks * stride_kn)
            vb = tl.load(v_ptrs + ks * stride_vn)
        else:  # keys past n_ctx load K = V = 0: dP = 0 there and dS K adds exactly 0
            kb = tl.load(k_ptrs + ks * stride_kn, mask=cols[:, None] < n_ctx, other=0.0)
            vb = tl.load(v_ptrs + ks * stride_vn, mask=cols[:, None] < n_ctx, other=0.0)
        s = _dot(qb, tl.trans(kb))
        p = tl.math.exp2(s * qk_scale - lse[:, None])  # P = exp(S - L)
        if not EVEN_N:  # keys past n_ctx (S = 0 there): P = 0
            p = tl.where(cols[None, :] < n_ctx, p, 0.0)
        if MASK_DIAG:
            p = tl.where(cols[None, :] <= rows[:, None], p, 0.0)
        dp = _dot(dob, tl.trans(vb))  # dP = dO V^T
        ds = p * (dp - delta[:, None])  # dS = P * (dP - delta)
        dq += _dot(ds.to(kb.dtype), kb)  # dQ += dS K
    return dq


@triton.jit
def _attention_bwd_dq(Q, K, V, dOut, Lse, Delta, dQ,
            stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
            stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn, heads, group, n_ctx, scale,
            qk_scale, n_class, HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
            CAUSAL: tl.constexpr, EVEN_N: tl.constexpr):
    """One program = one query block of one (batch, head): dQ, with the same causal split as the forward."""
    q_block, bh = tl.program_id(0), tl.program_id(1)
    batch, head = bh // heads, bh % heads
    kv_head = head // group
    qs = q_block * BLOCK_Q
    rows = qs + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)
    key_rows = tl.arange(0, BLOCK_K)
    q_ptrs = Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qn + dims[None, :]
    do_ptrs = dOut + batch * stride_dob + head * stride_doh + rows[:, None] * stride_don + dims[None, :]
    k_ptrs = K + batch * stride_kb + kv_head * stride_kh + key_rows[:, None] * stride_kn + dims[None, :]
    v_ptrs = V + batch * stride_vb + kv_head * stride_vh + key_rows[:, None] * stride_vn + dims[None, :]
    if EVEN_N:
        qb, dob = tl.load(q_ptrs), tl.load(do_ptrs)
        lse, delta = tl.load(Lse + bh * n_ctx + rows), tl.load(Delta + bh * n_ctx + rows)
    else:
        qb = tl.load(q_ptrs, mask=rows[:, None] < n_ctx, other=0.0)
        dob = tl.load(do_ptrs, mask=rows[:, None] < n_ctx, other=0.0)
        lse = tl.load(Lse + bh * n_ctx + rows, mask=rows < n_ctx, other=0.0)
        delta = tl.load(Delta + bh * n_ctx + rows, mask=rows < n_ctx, other=0.0)
    dq = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
    if CAUSAL:  # blocks left of the diagonal without a mask, then the diagonal (needs BLOCK_Q % BLOCK_K == 0)
        dq = _attention_bwd_dq_inner(dq, qb, dob, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, 0, qs, n_ctx,
                           qk_scale, BLOCK_K, False, EVEN_N)
        dq = _attention_bwd_dq_inner(dq, qb, dob, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, qs,
                           qs + BLOCK_Q, n_ctx, qk_scale, BLOCK_K, True, EVEN_N)
    else:
        dq = _attention_bwd_dq_inner(dq, qb, dob, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, 0,
                                     n_ctx, n_ctx,
                           qk_scale, BLOCK_K, False, EVEN_N)
    dq_ptrs = dQ + batch * stride_dqb + head * stride_dqh + rows[:, None] * stride_dqn + dims[None, :]
    dq = dq * scale
    if EVEN_N:
        tl.store(dq_ptrs, dq.to(dQ.dtype.element_ty))
    else:
        tl.store(dq_ptrs, dq.to(dQ.dtype.element_ty), mask=rows[:, None] < n_ctx)


# ---------------------------------------------------------------------------------------------------------------
# launch: block sizes (autotuned on a GPU, fixed and small in the interpreter), grids, strides

def _config(block_q: int, block_k: int, num_warps: int, num_stages: int) -> triton.Config:
    return triton.Config({"BLOCK_Q": block_q, "BLOCK_K": block_k}, num_warps=num_warps, num_stages=num_stages)


if INTERPRET:  # one small config: the interpreter runs every program one after another on the CPU
    FWD_CONFIGS = DKDV_CONFIGS = DQ_CONFIGS = [_config(16, 16, 4, 1)]
else:  # (block_q, block_k, num_warps, num_stages); the causal split needs the larger block a multiple of the other
    FWD_CONFIGS = [_config(*c) for c in ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2),
                                         (64, 64, 4, 3))]
    DKDV_CONFIGS = [_config(*c) for c in ((32, 128, 4, 3), (32, 128, 8, 3), (64, 128, 8, 3), (64, 64, 4, 3))]
    DQ_CONFIGS = [_config(*c) for c in ((128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3))]

# EVEN_N: every block is full, so loads and stores need no bounds masks (decided per launch, after tuning)
_EVEN = triton.heuristics({"EVEN_N": lambda a: a["n_ctx"] % a["BLOCK_Q"] == 0 and a["n_ctx"] % a["BLOCK_K"] == 0})
_KEY = ["HEAD_DIM", "CAUSAL", "n_class"]  # re-tune per head dim, causality and length class
_fwd_fixed = _EVEN(_attention_fwd)
_fwd_tuned = triton.autotune(FWD_CONFIGS, key=_KEY)(_fwd_fixed)
_dkdv_tuned = triton.autotune(DKDV_CONFIGS, key=_KEY)(_EVEN(_attention_bwd_dkdv))
_dq_tuned = triton.autotune(DQ_CONFIGS, key=_KEY)(_EVEN(_attention_bwd_dq))


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _n_class(n: int) -> int:
    """0: short (<= 2k), 1: medium (<= 8k), 2: long; the autotuner keeps one best config per class."""
    return 0 if n <= 2048 else 1 if n <= 8192 else 2


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Refuse what the kernels cannot compute, naming the argument, its value and the fix."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, seq_len, head_dim]; got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name}.dtype is {t.dtype}; use torch.float16 or torch.bfloat16")
        if t.stride(-1) != 1:
            raise ValueError(f"{name}'s last dimension must be contiguous (stride 1); call .contiguous()")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share batch, seq_len "
                         "and head_dim (k and v: the same shape); decoding with a shorter q is not supported")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads, k/v {k.shape[1]}: query heads must be a multiple of "
                         "key/value heads (grouped-query attention)")
    if q.shape[-1] not in (16, 32, 64, 128):
        raise ValueError(f"head_dim={q.shape[-1]}; the kernels take 16, 32, 64 or 128")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share dtype and device; got {q.dtype}/{k.dtype}/{v.dtype} on "
                         f"{q.device}/{k.device}/{v.device}")


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                            scale: float | None = None, block_q: int | None = None, block_k: int | None = None,
                            num_warps: int = 4, num_stages: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, lse) for q [B, H, N, d] and k, v [B, H_kv, N, d]; lse is [B, H, N] float32 in base 2 (log2-sum-exp2).
    Block sizes are autotuned unless `block_q` and `block_k` are given (then num_warps, num_stages are used)."""
    check_inputs(q, k, v)
    batch, heads, n, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, n), dtype=torch.float32, device=q.device)
    args = (q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out), heads,
            heads // k.shape[1], n, scale * LOG2_E)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_Q"]), batch * heads)  # noqa: E731
    with torch.profiler.record_function("labkit::triton_fa2_forward"):
        if block_q is None and block_k is None:
            _fwd_tuned[grid](*args, HEAD_DIM=d, CAUSAL=causal, n_class=_n_class(n))
        else:
            block_q, block_k = block_q or 128, block_k or 64
            if causal and block_q % block_k:
                raise ValueError(f"block_q={block_q} must be a multiple of block_k={block_k} for causal attention")
            _fwd_fixed[grid](*args, HEAD_DIM=d, CAUSAL=causal, n_class=0, BLOCK_Q=block_q, BLOCK_K=block_k,
                             num_warps=num_warps, num_stages=num_stages)
    return out, lse


def flash_attention_backward(q, k, v, out, lse, grad_out, causal: bool = False, scale: float | None = None):
    """(dQ, dK, dV) from the forward's inputs, O and lse: P is recomputed tile by tile, never stored."""
    batch, heads, n, d = q.shape
    kv_heads, group = k.shape[1], heads // k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    with torch.profiler.record_function("labkit::triton_fa2_backward"):
        _attention_bwd_delta[(triton.cdiv(n, 64), batch * heads)](
            out, grad_out, delta, *_strides(out), *_strides(grad_out), heads, n, HEAD_DIM=d, BLOCK_Q=64)
        common = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
        _dkdv_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_K"]), batch * kv_heads)](
            q, k, v, grad_out, lse, delta, dk, dv, *common, *_strides(dk), *_strides(dv), heads, kv_heads, group,
            n, scale, scale * LOG2_E, HEAD_DIM=d, CAUSAL=causal, n_class=_n_class(n))
        _dq_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_Q"]), batch * heads)](
            q, k, v, grad_out, lse, delta, dq, *common, *_strides(dq), heads, group, n, scale, scale * LOG2_E,
            HEAD_DIM=d, CAUSAL=causal, n_class=_n_class(n))
    return dq, dk, dv
