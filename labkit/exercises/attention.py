"""Checks of the attention exercises (notebooks 02 and 02b): each runs the learner's code on fresh inputs against
the definition of attention or the lab's own counts, and fails with a hint when it is wrong."""

from __future__ import annotations

import math

import torch

from labkit.attention import tiled, tiling
from labkit.exercises import call_answer, claim

_GEN_SEED = 1234


def _randn(*shape, dtype=torch.float64, seed: int = _GEN_SEED) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _tensor(out, what: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        from labkit.checks import ClaimFailed

        raise ClaimFailed(f"{what} should return a torch.Tensor; got {type(out).__name__}")
    return out


# -- notebook 02 --------------------------------------------------------------------------------------------------

def check_online_softmax(my_online_softmax) -> None:
    """`my_online_softmax(x, block)` must equal torch.softmax(x, -1) for every block size, also on rows whose
    maximum arrives late (where forgetting the rescale shows)."""
    x = _randn(3, 10)
    rising = torch.linspace(-3.0, 6.0, 10, dtype=torch.float64).expand(2, 10)  # the maximum is in the last block
    for name, data in (("random rows", x), ("rows whose maximum comes last", rising)):
        for block in (1, 3, 4, 10):
            out = _tensor(call_answer(my_online_softmax, "my_online_softmax", data, block), "my_online_softmax")
            claim(f"online softmax == torch.softmax ({name}, block={block})", out, torch.softmax(data, -1),
                  tol=1e-12, hint="when a block raises the row maximum, the running sum must be rescaled: "
                                  "l = l * exp(m_old - m_new) + sum(exp(x_block - m_new))")


def check_causal_tiled_forward(causal_tiled_forward) -> None:
    """`causal_tiled_forward(q, k, v, block_q, block_k)` -> (O, L, tiles): causal attention, the row log-sum-exp,
    and how many tiles the loops computed (the tiles wholly above the diagonal must be skipped)."""
    cases = [(64, 16, 16, 8), (50, 8, 16, 16), (40, 16, 8, 16)]  # (N, d, block_q, block_k); N ragged on purpose
    for i, (n, d, bq, bk) in enumerate(cases):
        q, k, v = (_randn(2, 3, n, d, seed=_GEN_SEED + 3 * i + j) for j in range(3))
        out = call_answer(causal_tiled_forward, "causal_tiled_forward", q, k, v, bq, bk)
        if not (isinstance(out, tuple) and len(out) == 3):
            from labkit.checks import ClaimFailed

            raise ClaimFailed(f"causal_tiled_forward should return (out, lse, tiles); got {type(out).__name__}")
        o, lse, tiles = out
        where = f"N={n}, block_q={bq}, block_k={bk}"
        claim(f"causal tiled O == causal softmax attention ({where})", _tensor(o, "out"),
              tiled.reference_attention(q, k, v, causal=True), tol=1e-10,
              hint="mask the scores of columns after the row (cols > rows) with -inf inside the diagonal tiles")
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        claim(f"L == logsumexp of the visible scores ({where})", _tensor(lse, "lse"), torch.logsumexp(scores, -1),
              tol=1e-10, hint="L = m + log(l) once the row is done")
        claim(f"tiles computed ({where})", int(tiles), sum(tiling.causal_tile_counts(n, bq, bk)),
              hint="stop each query block's key loop at the diagonal: key blocks starting at or after "
                   "qs + block_q hold only hidden scores (count one per tile the inner loop runs)")


def check_eager_score_bytes(eager_score_bytes) -> None:
    """`eager_score_bytes(n, heads)`: bytes of eager attention's N x N tensors of one Llama layer in bf16 (batch 1),
    against the lab's memory model."""
    from labkit.attention.memory_model import ModelShape, memory_breakdown

    shape = ModelShape.named("llama-2-7b")
    for n in (1024, 5000, 8192):
        got = call_answer(eager_score_bytes, "eager_score_bytes", n, shape.heads)
        claim(f"eager N x N bytes, Llama-2-7B layer, N={n}", int(got), memory_breakdown(shape, n)["eager_scores"],
              hint="per head: bf16 scores (2 bytes) + their float32 copy (4) + the float32 softmax (4) are alive "
                   "together; plus one N x N causal mask in bf16 shared by the heads")


def check_hbm_traffic(hbm_elements) -> None:
    """`hbm_elements(n, d, block)` -> (naive, tiled): elements read + written in HBM by one head's forward,
    non-causal, square tiles of `block`, against `labkit.attention.tiling.hbm_traffic`."""
    for n, d, block in ((64, 8, 16), (1024, 64, 128), (4096, 128, 64), (16384, 128, 128)):
        got = call_answer(hbm_elements, "hbm_elements", n, d, block)
        want = tiling.hbm_traffic(n, d, block, block)
        claim(f"naive elements, N={n}, d={d}", int(got[0]), want["naive"],
              hint="S = QK^T reads Q, K and writes S; the softmax reads S and writes P; PV reads P and V and "
                   "writes O")
        claim(f"tiled elements, N={n}, d={d}, block={block}", int(got[1]), want["tiled"],
              hint="Q is read once; every query block reads all of K and V; O is written once, plus one "
                   "log-sum-exp per row")


# -- notebook 02b -------------------------------------------------------------------------------------------------

def check_fold_block(fold_block) -> None:
    """`fold_block(m, l, acc, s, vb)` in base 2: three key blocks folded must give attention and the base-2 lse."""
    q, k, v = _randn(8, 16, dtype=torch.float32), _randn(40, 16, dtype=torch.float32, seed=7), \
        _randn(40, 16, dtype=torch.float32, seed=8)
    qk_scale = math.log2(math.e) / math.sqrt(16)  # the kernel's LOG2_E (no Triton needed: exercise 1 is PyTorch)
    state = (torch.full((8,), -torch.inf), torch.zeros(8), torch.zeros(8, 16))
    for ks in range(0, 40, 16):
        state = call_answer(fold_block, "fold_block", *state, q @ k[ks:ks + 16].T * qk_scale, v[ks:ks + 16])
    m, l, acc = state
    claim("acc / l == attention (three key blocks)", acc / l[:, None], tiled.reference_attention(q, k, v), tol=1e-5,
          hint="rescale both l and acc by exp2(m - m_new) before adding the new block's p and p @ vb")
    claim("m + log2(l) == base-2 log-sum-exp", m + torch.log2(l), torch.logsumexp(q @ k.T / 4, -1) / math.log(2),
          tol=1e-5, hint="m must be the running maximum of the (base-2) scores, l the sum of exp2(s - m)")


CAUSAL_CASES = [(256, 64, 64), (300, 128, 64), (1000, 128, 32), (77, 16, 16)]


def check_causal_tiles(causal_tiles) -> None:
    """`causal_tiles(n, block_q, block_k)` -> (unmasked, masked) against the kernel's loops (`tiling`)."""
    for n, bq, bk in CAUSAL_CASES:
        got = call_answer(causal_tiles, "causal_tiles", n, bq, bk)
        claim(f"(unmasked, masked) tiles, N={n}, {bq} x {bk}", tuple(int(x) for x in got),
              tiling.causal_tile_counts(n, bq, bk),
              hint="query block qs visits key blocks 0 .. qs without a mask (qs // block_k of them) and the "
                   "key blocks of [qs, min(qs + block_q, n)) with one")


def attention_floor_reference(n: int, head_dim: int, heads: int = 32, causal: bool = True,
                              matmul_tflops: float = 989.0, hbm_tb_s: float = 3.35) -> tuple[float, int, float]:
    """(flops, bytes, floor_ms) of one bf16 attention forward, batch 1: the answer `check_attention_floor` wants."""
    flops = 4 * heads * n * n * head_dim * (0.5 if causal else 1.0)
    nbytes = 4 * heads * n * head_dim * 2
    return flops, nbytes, max(flops / (matmul_tflops * 1e12), nbytes / (hbm_tb_s * 1e12)) * 1e3


def check_attention_floor(attention_floor, committed: dict | None = None) -> list[dict]:
    """`attention_floor(n, head_dim, heads, causal)` against the formula; then, on the committed H100 file when
    given, no measured forward beats the floor. Returns floor / measured per committed row."""
    for n, hd, causal in ((1024, 128, True), (16384, 128, True), (4096, 64, False)):
        got = call_answer(attention_floor, "attention_floor", n, hd, 32, causal)
        want = attention_floor_reference(n, hd, 32, causal)
        claim(f"FLOPs, N={n}, d={hd}, causal={causal}", float(got[0]), want[0], tol=1e-6 * want[0],
              hint="4 * heads * n^2 * head_dim: two matmuls of 2 n^2 d each; causal halves it")
        claim(f"bytes, N={n}, d={hd}", int(got[1]), want[1], hint="Q, K, V read once and O written once, 2 bytes each")
        claim(f"floor (ms), N={n}, d={hd}, causal={causal}", float(got[2]), want[2], tol=1e-6 * want[2],
              hint="the larger of flops / (TFLOP/s * 1e12) and bytes / (TB/s * 1e12), in milliseconds")
    flops16, nbytes16, _ = call_answer(attention_floor, "attention_floor", 16384, 128, 32, True)
    claim("N=16k: arithmetic time / memory time", round((flops16 / 989e12) / (nbytes16 / 3.35e12), 1), 10, op=">",
          hint="at long N attention is compute-bound")
    rows = []
    if committed is None:
        return rows
    worst, flop_gap = math.inf, 0.0
    for r in committed["rows"]:
        if r["direction"] == "forward" and r["ok"]:
            flops, _, floor = attention_floor(r["seq_len"], r["head_dim"], r["heads"], r["causal"])
            flop_gap = max(flop_gap, abs(flops / (r["tflops"] * r["ms"] * 1e9) - 1))
            worst = min(worst, r["ms"] / floor)
            rows.append(dict(backend=r["backend"], head_dim=r["head_dim"], seq_len=r["seq_len"],
                             fraction_of_floor=floor / r["ms"]))
    claim("your FLOPs vs the file's (TFLOP/s x ms), worst relative gap", flop_gap, 1e-6, op="<=",
          committed="triton_fa2_h100.json", hint="the file counts 4 * heads * n^2 * head_dim, halved when causal")
    claim("min(measured / floor) over the committed forwards", round(worst, 3), 1.0, op=">=",
          committed="triton_fa2_h100.json", hint="no kernel can beat the floor; check the units (ms)")
    return rows


def check_row_logsumexp(row_logsumexp, device: torch.device | str = "cpu") -> None:
    """`row_logsumexp(s)` (a Triton kernel and its launch) against torch.logsumexp(s, -1): ragged shapes, and
    scores large enough that exp overflows in float32 unless the running maximum is subtracted."""
    device = torch.device(device)
    for rows, cols, offset in ((7, 33, 0.0), (16, 64, 0.0), (1, 5, 0.0), (20, 100, 100.0)):
        s = (_randn(rows, cols, dtype=torch.float32, seed=rows * cols) * 4 + offset).to(device)
        out = _tensor(call_answer(row_logsumexp, "row_logsumexp", s), "row_logsumexp")
        claim(f"row log-sum-exp == torch.logsumexp ({rows} x {cols}, scores around {offset:g})", out.float().cpu(),
              torch.logsumexp(s.cpu(), -1), tol=1e-3 * max(1.0, offset),
              hint="keep a running maximum m per row and rescale the running sum by exp(m_old - m_new); load "
                   "out-of-range columns as -inf so they add exp(-inf) = 0")


__all__ = ["CAUSAL_CASES", "attention_floor_reference", "check_attention_floor", "check_causal_tiled_forward",
           "check_causal_tiles", "check_eager_score_bytes", "check_fold_block", "check_hbm_traffic",
           "check_online_softmax", "check_row_logsumexp"]
