"""labkit's Triton FlashAttention-2 as a differentiable function and as a transformers attention backend.

    triton_flash_attention(q, k, v, causal=True)   autograd-aware attention on [B, H, N, d] tensors (GQA: k, v
                                                  may have fewer heads); the backward recomputes P from lse
    triton_unavailable_reason(device)             why it cannot run here (None: it can)

The kernels are in `labkit.attention.triton_fa2`; `labkit.attention.backends` registers this function with
transformers as the backend "triton-fa2". They need an NVIDIA GPU, or Triton's CPU interpreter
(`TRITON_INTERPRET=1` set before Triton is imported; slow, for tests only).
"""

from __future__ import annotations

import importlib.util
import os

import torch


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is switched on (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """Why the Triton kernels cannot run on `device` (None: they can)."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (`pip install triton`, on Linux it comes with CUDA PyTorch)"
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "needs an NVIDIA GPU (CUDA), but no CUDA GPU is visible to PyTorch"
        cc = torch.cuda.get_device_capability(device)
        if cc < (8, 0):
            return f"needs compute capability >= 8.0 (Ampere or newer); the GPU is {cc[0]}.{cc[1]}"
        return None
    if device.type == "cpu" and interpreter_enabled():
        return None
    return (f"needs an NVIDIA GPU (CUDA), but the device is {device.type} (Triton compiles GPU kernels; "
            "TRITON_INTERPRET=1 runs them slowly in Triton's CPU interpreter, for tests)")


class TritonFlashAttention(torch.autograd.Function):
    """Like tiled.py's TiledAttention: the forward saves Q, K, V, O and lse only; the backward recomputes P."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False, scale=None):
        from labkit.attention.triton_fa2 import flash_attention_forward

        out, lse = flash_attention_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (causal, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from labkit.attention.triton_fa2 import flash_attention_backward

        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, out, lse, grad_out, *ctx.config)
        return dq, dk, dv, None, None


def triton_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                           scale: float | None = None) -> torch.Tensor:
    """softmax(Q K^T * scale) V with labkit's Triton FlashAttention-2 (scale defaults to 1/sqrt(d)).
    q: [B, H, N, d]; k, v: [B, H_kv, N, d] with H a multiple of H_kv; fp16 or bf16."""
    return TritonFlashAttention.apply(q, k, v, causal, scale)
