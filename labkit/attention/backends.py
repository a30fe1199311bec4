"""Attention backends for Hugging Face models: what each one is, whether it can run here, and how to select it.

A backend is selected on a model through transformers' own mechanism: forced SDPA variants are registered with
`AttentionInterface` (the function wraps transformers' `sdpa` attention inside `torch.nn.attention.sdpa_kernel`)
and `AttentionMaskInterface` (the `sdpa` mask, which is skipped when there is no padding so SDPA gets
`is_causal=True` and no mask), then `model.set_attn_implementation(...)` switches to it. Forcing one SDPA
backend means PyTorch raises instead of silently falling back to another kernel.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)
# what PyTorch says when no allowed SDPA kernel accepts the inputs (CUDA, CPU)
_NO_KERNEL_MESSAGES = ("no available kernel", "no viable backend")


class UnknownBackendError(ValueError):
    """A backend name that is not in `BACKENDS`."""


class BackendUnavailableError(RuntimeError):
    """A known backend that cannot run on this device, dtype or installation (the message says why)."""


class BackendFallbackError(RuntimeError):
    """A forced backend refused the inputs at run time; PyTorch was not allowed to fall back to another kernel."""


@dataclass(frozen=True)
class Backend:
    """One attention backend.

    hf_name: the transformers `attn_implementation` it is selected with.
    sdpa_backends: names of `torch.nn.attention.SDPBackend` members it is forced to (None: not forced).
    needs_cuda / min_capability / half_only: hardware and dtype requirements.
    in_sweep: run by default in `python -m labkit.bench attention`.
    """

    name: str
    description: str
    hf_name: str
    sdpa_backends: tuple[str, ...] | None = None
    needs_cuda: bool = False
    min_capability: tuple[int, int] | None = None
    half_only: bool = False
    needs_package: str | None = None
    in_sweep: bool = True


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("eager", "transformers' eager attention: matmul, N x N scores, softmax, matmul", "eager"),
        Backend("sdpa", "PyTorch scaled_dot_product_attention, the dispatcher picks the kernel "
                "(flash, cuDNN, memory-efficient or math)", "sdpa"),
        Backend("fa2", "SDPA forced to PyTorch's FLASH_ATTENTION backend: FlashAttention-2's CUDA kernel "
                "built into PyTorch", "labkit_fa2", ("FLASH_ATTENTION",), needs_cuda=True,
                min_capability=(8, 0), half_only=True),
        Backend("flash-attn", "transformers' flash_attention_2 through the flash-attn package",
                "flash_attention_2", needs_cuda=True, min_capability=(8, 0), half_only=True,
                needs_package="flash_attn"),
        Backend("cudnn", "SDPA forced to PyTorch's CUDNN_ATTENTION backend (cuDNN fused attention)",
                "labkit_cudnn", ("CUDNN_ATTENTION",), needs_cuda=True, min_capability=(9, 0), half_only=True),
        Backend("triton-fa2", "labkit's own FlashAttention-2 kernels written in Triton "
                "(labkit.attention.triton_fa2, to read beside tiled.py)", "labkit_triton_fa2", needs_cuda=True,
                min_capability=(8, 0), half_only=True, needs_package="triton"),
        Backend("math", "SDPA forced to PyTorch's MATH backend: the reference composite, materialises N x N "
                "like eager (runs everywhere; used to test the forcing mechanism on a CPU)", "labkit_math",
                ("MATH",), in_sweep=False),
    )
}


def _unknown(name: object) -> UnknownBackendError:
    return UnknownBackendError(
        f"unknown attention backend {name!r}; known backends: {', '.join(BACKENDS)}. "
        "See labkit.attention.BACKENDS[name].description for what each one is."
    )


def get(name: str) -> Backend:
    """The `Backend` called `name`, or UnknownBackendError listing the known ones."""
    if name not in BACKENDS:
        raise _unknown(name)
    return BACKENDS[name]


def flash_attn_build_reason(dtype: torch.dtype | None = None, head_dim: int | None = None) -> str | None:
    """Why the installed flash-attn package has no kernel for `dtype` / `head_dim` (None: it has, or it is a full
    build). A build made by the lab's tools/build_flash_attn.sh with a subset of head dims or dtypes records them in
    `flash_attn.LABKIT_BUILD`; flash-attn runs a head dim on the smallest built kernel at least as large."""
    import flash_attn

    build = getattr(flash_attn, "LABKIT_BUILD", None)
    if not build:
        return None
    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    if dtype in names and names[dtype] not in build["dtypes"]:
        return (f"this flash-attn build has {'/'.join(build['dtypes'])} kernels only, not {names[dtype]}; rebuild it "
                f"with FA_DTYPES=bf16,fp16 tools/build_flash_attn.sh, or use another dtype")
    if head_dim is not None and head_dim > max(build["head_dims"]):
        return (f"this flash-attn build has kernels for head dims up to {max(build['head_dims'])} "
                f"(built: {', '.join(map(str, build['head_dims']))}), and the model's head dim is {head_dim}; rebuild "
                f"it with FA_HEAD_DIMS={head_dim} tools/build_flash_attn.sh, or use another backend")
    return None


def unavailable_reason(name: str, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None, head_dim: int | None = None) -> str | None:
    """Why backend `name` cannot run on `device` with `dtype` (and attention head dim `head_dim`, where the backend
    depends on it; None: it can). Never raises for a known name."""
    backend = get(name)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if name == "triton-fa2":  # a GPU, or Triton's CPU interpreter in tests (any dtype there)
        from labkit.attention.triton_fa2_backend import interpreter_enabled, triton_unavailable_reason

        reason = triton_unavailable_reason(device)
        if reason is None and device.type == "cuda" and dtype is not None and dtype not in HALF_DTYPES:
            reason = f"runs in float16 or bfloat16 only; the model is {dtype} (build it with dtype=torch.bfloat16)"
        if reason is None and device.type == "cpu" and not interpreter_enabled():
            reason = "needs an NVIDIA GPU (CUDA)"
        return reason
    if backend.needs_package and importlib.util.find_spec(backend.needs_package) is None:
        return (f"the {backend.needs_package.replace('_', '-')} package is not installed "
                f"(`pip install flash-attn --no-build-isolation` on a CUDA machine)")
    if backend.needs_cuda:
        if device.type != "cuda":
            extra = (" (PyTorch's CPU 'flash' SDPA backend is a different C++ kernel, not FlashAttention-2)"
                     if name == "fa2" else "")
            return f"needs an NVIDIA GPU (CUDA), but the device is {device.type}{extra}"
        if not torch.cuda.is_available():
            return "needs an NVIDIA GPU (CUDA), but no CUDA GPU is visible to PyTorch"
        if name == "fa2" and not torch.backends.cuda.is_flash_attention_available():
            return "this PyTorch build has no flash-attention kernels"
        if name == "cudnn" and not torch.backends.cudnn.is_available():
            return "this PyTorch build has no cuDNN"
        if backend.min_capability is not None:
            cc = torch.cuda.get_device_capability(device)
            if cc < backend.min_capability:
                need = "%d.%d" % backend.min_capability
                return (f"needs compute capability >= {need} "
                        f"({'Hopper' if backend.min_capability >= (9, 0) else 'Ampere'} or newer); "
                        f"{torch.cuda.get_device_name(device)} is {cc[0]}.{cc[1]}")
    if backend.half_only and dtype is not None and dtype not in HALF_DTYPES:
        return f"runs in float16 or bfloat16 only; the model is {dtype} (build it with dtype=torch.bfloat16)"
    if name == "flash-attn":
        return flash_attn_build_reason(dtype, head_dim)
    return None


def backend_status(device: torch.device | str | None = None) -> dict[str, str]:
    """{backend: "available" or the reason it is not} for `device` (default: cuda if visible, else cpu)."""
    return {name: unavailable_reason(name, device) or "available" for name in BACKENDS}


def available_backends(device: torch.device | str | None = None, sweep_only: bool = True) -> list[str]:
    """Names of the backends that can run on `device` (by default those run in the benchmark sweep)."""
    return [n for n, b in BACKENDS.items() if (b.in_sweep or not sweep_only) and unavailable_reason(n, device) is None]


def check_backend(name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  head_dim: int | None = None) -> Backend:
    """The `Backend` if it can run on `device`/`dtype`/`head_dim`; otherwise UnknownBackendError or
    BackendUnavailableError."""
    backend = get(name)
    reason = unavailable_reason(name, device, dtype, head_dim)
    if reason is not None:
        raise BackendUnavailableError(f"attention backend {name!r} cannot run here: {reason}.")
    return backend


# ---------------------------------------------------------------------------------------------------------------
# transformers integration


def _forced_sdpa_function(backend: Backend):
    """A transformers attention function: transformers' sdpa attention with SDPA forced to `backend`'s kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = [getattr(SDPBackend, k) for k in backend.sdpa_backends]

    def attention(module, query, key, value, attention_mask, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if backend.needs_cuda and query.device.type != "cuda":
            raise BackendUnavailableError(
                f"attention backend {backend.name!r} needs CUDA tensors but got {query.device}; "
                "move the model to the GPU or select another backend."
            )
        with sdpa_kernel(kernels):
            try:
                return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)
            except RuntimeError as err:
                if not any(m in str(err).lower() for m in _NO_KERNEL_MESSAGES):
                    raise
                why = []
                if attention_mask is not None:
                    why.append("an explicit attention mask was passed (padding, or a non-causal pattern); "
                               "flash and cuDNN take only is_causal, so run without padding")
                if query.dtype not in HALF_DTYPES:
                    why.append(f"dtype is {query.dtype}, the kernel needs float16/bfloat16")
                why.append(f"head_dim={query.shape[-1]}, device={query.device}")
                raise BackendFallbackError(
                    f"attention backend {backend.name!r} was forced ({'/'.join(backend.sdpa_backends)}) and "
                    f"PyTorch could not run it on these inputs: {'; '.join(why)}. PyTorch's warnings above give "
                    "its exact reasons. labkit does not fall back to another kernel."
                ) from err

    attention.__name__ = attention.__qualname__ = f"labkit_{backend.name.replace('-', '_')}_attention"
    return attention


def _triton_fa2_function(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function (query [B, H, N, d], key/value [B, H_kv, N, d]) -> ([B, N, H, d], None).

    Causal when the module is (decoder self-attention) and there is no padding mask; a mask, dropout or a
    query shorter than the keys (decoding with a cache) is refused: the kernel takes none of them."""
    from labkit.attention.triton_fa2_backend import triton_flash_attention, triton_unavailable_reason

    if attention_mask is not None:
        raise BackendFallbackError(
            "attention backend 'triton-fa2' got an explicit attention mask (padding, or a non-causal pattern); "
            "the kernel takes only causal or full attention: run without padding")
    if dropout and module.training:
        raise BackendFallbackError(f"attention backend 'triton-fa2' has no dropout; got dropout={dropout}")
    if query.shape[-2] != key.shape[-2]:
        raise BackendFallbackError(
            f"attention backend 'triton-fa2' needs as many queries as keys (prefill); got {query.shape[-2]} "
            f"queries for {key.shape[-2]} keys (decoding with a KV cache): use use_cache=False or another backend")
    reason = triton_unavailable_reason(query.device)
    if reason is not None:
        raise BackendFallbackError(f"attention backend 'triton-fa2' cannot run on {query.device}: {reason}")
    causal = bool(getattr(module, "is_causal", True)) and query.shape[-2] > 1
    out = triton_flash_attention(query, key, value, causal, scaling)
    return out.transpose(1, 2).contiguous(), None


def register_backends() -> None:
    """Register labkit's forced SDPA backends and its Triton FlashAttention-2 with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for backend in BACKENDS.values():
        if backend.sdpa_backends is not None:
            AttentionInterface.register(backend.hf_name, _forced_sdpa_function(backend))
        elif backend.name == "triton-fa2":
            AttentionInterface.register(backend.hf_name, _triton_fa2_function)
        else:
            continue
        # Same mask as `sdpa`: None when there is no padding, so the kernel runs causal with no mask.
        AttentionMaskInterface.register(backend.hf_name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def _head_dim(model: torch.nn.Module) -> int | None:
    """The attention head dim of a transformers model (None when its config does not say)."""
    config = getattr(model, "config", None)
    if getattr(config, "head_dim", None):
        return int(config.head_dim)
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    return hidden // heads if heads and hidden else None


def set_backend(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Make `model` (a transformers model) run attention with backend `name`; returns the model.

    Raises UnknownBackendError or BackendUnavailableError (with the reason) before touching the model, and
    RuntimeError if transformers did not switch (no silent fallback). Use `verify_backend` to see the kernel.
    """
    backend = get(name)
    device, dtype = _model_device_dtype(model)
    check_backend(name, device, dtype, _head_dim(model))
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"{type(model).__name__} is not a transformers PreTrainedModel with set_attn_implementation")
    register_backends()
    model.set_attn_implementation(backend.hf_name)
    actual = model.config._attn_implementation
    if actual != backend.hf_name:
        raise RuntimeError(
            f"asked transformers for attn_implementation={backend.hf_name!r} ({name}) but the model uses "
            f"{actual!r}; {type(model).__name__} may not support switching attention."
        )
    return model


def get_backend(model: torch.nn.Module) -> str:
    """The labkit backend name a transformers model currently uses (its `attn_implementation` if not labkit's)."""
    impl = model.config._attn_implementation
    for backend in BACKENDS.values():
        if backend.hf_name == impl:
            return backend.name
    return impl
