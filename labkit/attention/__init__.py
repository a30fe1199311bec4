"""Attention backends (eager, sdpa, fa2, triton-fa2, flash-attn, cudnn), proof of which kernel ran, and a memory model.

    set_backend(model, "fa2")          make a transformers model run FlashAttention-2 (or raise, saying why)
    verify_backend(model, "fa2")       profile one forward pass and check the kernel that really ran
    backend_status()                   {name: "available" | reason} on this machine
    labkit.attention.memory_model      analytic bytes of weights, activations, KV cache, eager's N x N tensors
    labkit.attention.tiled             FlashAttention-2's algorithm in plain PyTorch, for reading
    labkit.attention.triton_fa2        the same algorithm as Triton GPU kernels (backend "triton-fa2"); its
                                       autograd Function in triton_fa2_backend, its benchmark in triton_fa2_bench
    labkit.attention.sweep             latency and peak memory against sequence length, per backend (OOM = data)
    labkit.attention.kernels           attention kernels alone: TFLOP/s per backend, and a plain-script check
"""

from labkit.attention.backends import (
    BACKENDS,
    Backend,
    BackendFallbackError,
    BackendUnavailableError,
    UnknownBackendError,
    available_backends,
    backend_status,
    check_backend,
    get_backend,
    register_backends,
    set_backend,
    unavailable_reason,
)
from labkit.attention.verify import BackendEvidence, BackendMismatchError, compare_backends, verify_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendEvidence",
    "BackendFallbackError",
    "BackendMismatchError",
    "BackendUnavailableError",
    "UnknownBackendError",
    "available_backends",
    "backend_status",
    "check_backend",
    "compare_backends",
    "get_backend",
    "register_backends",
    "set_backend",
    "unavailable_reason",
    "verify_backend",
]
