"""labkit's INT8 weight-only matmul in Triton: int8 weights, one float scale per output channel, bf16 activations.

    out[m, n] = scale[n] * sum_k x[m, k] * w[n, k]          (w: int8 codes, laid out like nn.Linear.weight)

Why a kernel of our own. At decode time (one token, M = 1) a Linear is a matrix-VECTOR product: every weight
is read once and used for exactly one multiply-add. The GPU spends its time moving weight bytes, not doing
arithmetic. INT8 weights are half the bytes of bf16 ones, so a kernel that reads the int8 codes straight from
memory and turns them into floats *in registers* should be close to twice as fast as bf16. The slow way, the one
a generic library falls back to, first writes a bf16 copy of the weight to memory (dequantize) and then runs the
bf16 matmul on it: more bytes than bf16 alone, so INT8 ends up slower. This file is the fast way, in ~60 lines.

How it works (read `_int8_weight_only_kernel` alongside):
  * The output is cut into tiles of BLOCK_M rows (tokens) x BLOCK_N columns (output channels); each Triton
    program owns one tile. For decode M is 1..16, so there is one tile row and N / BLOCK_N programs.
  * Each program walks along K (the input features) in steps of BLOCK_K. At each step it loads a BLOCK_N x
    BLOCK_K tile of int8 codes (contiguous along K: wide, coalesced loads) and a BLOCK_M x BLOCK_K tile of x,
    converts the codes to bf16 (exact: every int8 value is a bf16 number) and accumulates the product in fp32.
  * Split-K: with few output channels (the down projection has N = 4096) there would be too few programs to
    keep every streaming multiprocessor busy. SPLIT_K > 1 gives each program only every SPLIT_K-th K step; the
    partial sums are added into an fp32 output with atomic adds and cast to bf16 afterwards.
  * The per-channel scale is applied once, to the fp32 accumulator, at the very end (it does not depend on k).

The kernel runs on NVIDIA GPUs, and on CPU tensors through Triton's interpreter (`TRITON_INTERPRET=1` set before
triton is imported; slow, for tests and the notebook). `int8_weight_only_mm` is the entry point; `labkit.quant.int8_linear` wraps it in a Linear.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

try:  # Triton is optional: without it the Linear uses its dequantize + matmul path.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

SMALL_M = 16
"""Up to this many rows (tokens) the kernel runs; above it a matmul library is faster (compute-bound)."""


def interpreted() -> bool:
    """True when the kernel was defined under Triton's interpreter (TRITON_INTERPRET=1 at import time)."""
    return triton is not None and type(_int8_weight_only_kernel).__name__ == "InterpretedFunction"


def triton_available(device: torch.device | str = "cuda") -> tuple[bool, str]:
    """(usable, reason) for tensors on `device`: a CUDA GPU compiles the kernel; CPU tensors run it through
    Triton's interpreter (numpy, one program at a time: for tests and lessons, far too slow for models), which
    must be switched on with TRITON_INTERPRET=1 before triton is first imported."""
    if triton is None:
        return False, "the triton package is not installed (pip install triton)"
    if torch.device(device).type == "cpu":
        if not interpreted():
            return False, ("CPU tensors need Triton's interpreter: set os.environ['TRITON_INTERPRET'] = '1' before "
                           "triton is first imported (restart the kernel/process if it already was)")
        return True, "CPU tensors: Triton's interpreter"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    return True, "CUDA GPU"


if triton is not None:

    @triton.jit
    def _int8_weight_only_kernel(
        x_ptr, w_ptr, scale_ptr, out_ptr,          # x [M, K] bf16, w [N, K] int8, scale [N] fp32, out [M, N]
        M, N, K,
        stride_xm, stride_wn, stride_om,            # row strides (the last dimension of each is contiguous)
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr,
        DOT_FP32: tl.constexpr,                     # True only in the CPU interpreter (see step 4)
    ):
        # 1. Which tile of the output is mine, and which share of K (split-K) do I sum over?
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        pid_m = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # rows of x / out (tokens)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)          # rows of w / columns of out (channels)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N

        # 2. Pointers to the first K-tile of x ([BLOCK_M, BLOCK_K]) and of w ([BLOCK_N, BLOCK_K]).
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
        w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :]

        # 3. Walk along K: this program takes K-tiles pid_k, pid_k + SPLIT_K, pid_k + 2 * SPLIT_K, ...
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)    # the output tile, fp32
        acc_1 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # one-token path: per-lane partial sums
        for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
            mask_k = (k0 + offs_k) < K
            x = tl.load(x_ptrs + k0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            # every weight byte is used once: evict_first tells the L2 cache not to keep it (x stays cached)
            w = tl.load(w_ptrs + k0, mask=mask_n[:, None] & mask_k[None, :], other=0, eviction_policy="evict_first")
            # 4. Dequantize in registers: int8 -> fp32 is exact; the scale waits until the end.
            w = w.to(tl.float32)
            if BLOCK_M == 1:
                # one token: multiply-add lane by lane, no tensor cores needed (memory-bound anyway); the sum
                # across K (a shuffle between threads) waits until after the loop
                acc_1 += w * x.to(tl.float32)
            elif DOT_FP32:
                # the CPU interpreter computes bf16 tl.dot wrongly, so there the tile product runs in fp32
                # (same result: bf16 x int8 products are exact in fp32)
                acc += tl.dot(x.to(tl.float32), tl.trans(w))
            else:
                # several tokens: the tensor cores multiply [BLOCK_M, BLOCK_K] by [BLOCK_K, BLOCK_N] in bf16
                # (int8 -> bf16 is exact too: every int8 value is a bf16 number)
                acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        if BLOCK_M == 1:
            acc = tl.sum(acc_1, axis=1)[None, :]

        # 5. One multiply per output channel: the per-channel scale (fp32).
        scale = tl.load(scale_ptr + offs_n, mask=mask_n, other=0.0)
        acc = acc * scale[None, :]

        # 6. Write the tile: straight to the bf16 output, or (split-K) added into the fp32 output.
        out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
        if SPLIT_K == 1:
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(out_ptrs, acc, mask=mask)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch settings of one kernel launch."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


TUNED: dict[tuple[int, int, int], KernelConfig] = {
    # measured fastest on an H100 80GB HBM3 (python -m labkit.experiments.fast8bit --parts kernel): the down
    # projection of Llama-2-7B at one token prefers the lane-by-lane path with long K tiles
    (1, 4096, 11008): KernelConfig(1, 8, 1024, 1, num_warps=4, num_stages=6),
}
"""(m bucket 1 or 16, n, k) -> a configuration measured faster than the default for that shape."""


def pick_config(m: int, n: int, k: int) -> KernelConfig:
    """A launch configuration for an [m, k] x [k, n] product, m <= SMALL_M.

    Default: tensor cores with BLOCK_M = 16 (padding a single token to 16 rows costs nothing: the kernel waits
    on memory, not on arithmetic), 32 channels x 256 codes per tile, no split-K. On an H100 this was the fastest
    or within 10% of the fastest of the swept configurations for both Llama-2-7B feed-forward shapes at
    M = 1 and M = 16; with 4096 or more output channels there are enough programs to fill the GPU without
    split-K (it pays on narrower layers)."""
    bucket = 1 if m == 1 else 16
    if (bucket, n, k) in TUNED:
        return TUNED[(bucket, n, k)]
    split = 1 if n >= 2048 else 4
    return KernelConfig(16, 32, 256, split, num_warps=4, num_stages=4)


def launch_grid(cfg: KernelConfig, m: int, n: int) -> tuple[int, int, int]:
    """The kernel's launch grid: (output-channel tiles, split-K parts, token tiles); one program per cell."""
    return (-(-n // cfg.block_n), cfg.split_k, -(-m // cfg.block_m))


def int8_weight_only_mm(x: torch.Tensor, w_int8: torch.Tensor, scale: torch.Tensor,
                        config: KernelConfig | None = None) -> torch.Tensor:
    """x [..., K] (bf16/fp16/fp32) times the INT8 weight w_int8 [N, K] with scale [N]: out [..., N] in x.dtype.

    Launches the Triton kernel directly (no torch.compile wrapping; see `labkit.quant.int8_linear` for the op
    that torch.compile and CUDA graphs can see through)."""
    ok, why = triton_available(x.device)
    if not ok:
        raise RuntimeError(f"labkit's INT8 Triton kernel cannot run here: {why}")
    if w_int8.dtype != torch.int8 or w_int8.ndim != 2:
        raise ValueError(f"w_int8 must be a 2-D int8 tensor [N, K], got {w_int8.dtype} {tuple(w_int8.shape)}")
    n, k = w_int8.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} input features but the weight expects {k}")
    if scale.numel() != n:
        raise ValueError(f"scale must hold one value per output channel ({n}), got {scale.numel()}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    w = w_int8 if w_int8.stride(-1) == 1 else w_int8.contiguous()
    s = scale.reshape(n).to(torch.float32)
    m = x2.shape[0]
    cfg = config or pick_config(m, n, k)
    if cfg.split_k > 1:
        out = torch.zeros((m, n), device=x.device, dtype=torch.float32)
    else:
        out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = launch_grid(cfg, m, n)
    on_cpu = x.device.type == "cpu"
    with _interpreter_switched_on(on_cpu):
        _int8_weight_only_kernel[grid](
            x2, w, s, out, m, n, k, x2.stride(0), w.stride(0), out.stride(0),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
            DOT_FP32=on_cpu or x2.dtype == torch.float32,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return out.to(x.dtype).reshape(*lead, n)


@contextlib.contextmanager
def _interpreter_switched_on(on: bool):
    """Triton's interpreter also reads TRITON_INTERPRET while launching (lazy imports): hold it on for CPU calls."""
    if not on or os.environ.get("TRITON_INTERPRET") == "1":
        yield
        return
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        del os.environ["TRITON_INTERPRET"]


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8, one scale per output channel (row), bit for bit torchao's per-row INT8 weights:
    scale = max|w_row| / 127.5 (computed in the weight's dtype, stored as fp32),
    codes = round(w * (1 / scale)) clamped to [-128, 127]."""
    w = weight.detach()
    scale = (w.abs().amax(dim=1) / 127.5).clamp(min=torch.finfo(torch.float32).eps).to(torch.float32)
    codes = torch.clamp(torch.round(w * (1.0 / scale[:, None])), -128, 127).to(torch.int8)
    return codes, scale


def reference_mm(x: torch.Tensor, w_int8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float reference the kernel is tested against: dequantize in fp64, multiply in fp64."""
    w = w_int8.to(torch.float64) * scale.to(torch.float64)[:, None]
    return x.to(torch.float64) @ w.t()


def weight_only_bytes(m: int, n: int, k: int, x_bytes: int = 2) -> int:
    """The fewest bytes one call must move: int8 weights + fp32 scales + activations in + results out."""
    return n * k + 4 * n + x_bytes * m * k + x_bytes * m * n


__all__ = [
    "SMALL_M",
    "KernelConfig",
    "TUNED",
    "int8_weight_only_mm",
    "interpreted",
    "launch_grid",
    "pick_config",
    "quantize_per_channel",
    "reference_mm",
    "triton_available",
    "weight_only_bytes",
]
