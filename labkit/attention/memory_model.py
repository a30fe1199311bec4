"""Analytic memory of a Llama forward pass (inference, no KV cache kept): why eager attention explodes.

Bytes are counted from the shapes alone:
    weights        every parameter once (tied embeddings once)
    activations    what one decoder layer holds at its busiest moment, plus the residual stream: linear in N
    eager scores   eager attention's N x N tensors for one layer at its busiest moment, the float32 softmax:
                   `softmax(scores, dtype=float32)` keeps the masked scores (dtype) alive while it makes a float32
                   copy of them (bf16 has no fused half-to-float path in PyTorch, fp16 on CUDA has) and the
                   float32 result; the cast back to dtype follows. Plus the N x N causal mask transformers builds
                   once per forward. Quadratic in N
    kv cache       keys and values of every layer, what generation would keep (not held by a plain forward)
Flash-style kernels (fa2, cuDNN, flash-attn, SDPA's flash/efficient) never hold the N x N tensors, so their
model is weights + activations. The model ignores allocator rounding and small buffers: it is a lower bound
that should track the measured peak, not match it to the byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-style model that decide its memory."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a transformers LlamaConfig (or any config with the same fields)."""
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size, layers=config.num_hidden_layers, heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate=config.intermediate_size, vocab=config.vocab_size,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    @classmethod
    def named(cls, name: str, num_layers: int | None = None) -> "ModelShape":
        """From a labkit shape name ("llama-2-7b", "tiny-llama", "smollm2-135m" ...)."""
        from labkit.models import shape_config

        return cls.from_config(shape_config(name, num_layers))

    def parameters(self) -> int:
        """Parameter count: embeddings, per layer q/k/v/o + gate/up/down + 2 norms, final norm, lm_head."""
        h, d = self.hidden, self.head_dim
        attn = h * self.heads * d + 2 * h * self.kv_heads * d + self.heads * d * h
        mlp = 3 * h * self.intermediate
        per_layer = attn + mlp + 2 * h
        embed = self.vocab * h
        return embed + self.layers * per_layer + h + (0 if self.tied_embeddings else embed)

    def as_dict(self) -> dict:
        return asdict(self)


def dtype_bytes(dtype: torch.dtype | str | int) -> int:
    """Bytes per element of a dtype (accepts torch dtypes, names like "bfloat16", or a number of bytes)."""
    if isinstance(dtype, int):
        return dtype
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return torch.empty((), dtype=dtype).element_size()


def eager_bytes_per_score(dtype: torch.dtype | str | int) -> int:
    """Bytes alive per N x N element at eager attention's peak (transformers' `softmax(..., dtype=float32)
    .to(dtype)`): float32 8 (scores + softmax); float16 8 (CUDA's fused half-to-float softmax: scores 2 +
    softmax 4, then the cast 2); bfloat16 10 (scores 2 + float32 copy 4 + softmax 4). An int means bytes
    (2 is taken as bfloat16)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype in (4, torch.float32):
        return 8
    if dtype == torch.float16:
        return 8
    if dtype in (2, torch.bfloat16):
        return 10
    b = dtype_bytes(dtype)
    return b + 8


def memory_breakdown(shape: ModelShape, seq_len: int, batch_size: int = 1,
                     dtype: torch.dtype | str | int = torch.bfloat16, logits_to_keep: int = 1) -> dict[str, int]:
    """Bytes of each part of a forward pass at `seq_len` tokens (see the module docstring for what each is)."""
    b = dtype_bytes(dtype)
    T = batch_size * seq_len
    h, d, H, KV, I = shape.hidden, shape.head_dim, shape.heads, shape.kv_heads, shape.intermediate
    weights = shape.parameters() * b
    residual = T * h * b  # the residual stream, alive across layers
    blocks = {
        # RMSNorm upcasts to float32: float32 copy + normalised float32 + cast back
        "norm": T * h * (4 + 4 + b),
        # q, k, v projections; rotated q and k; attention output and its contiguous transpose
        "attention": T * d * ((H + 2 * KV) + (H + KV) + 2 * H) * b,
        # gate -> act(gate), up, act(gate) * up
        "mlp": 3 * T * I * b,
    }
    activations = residual + max(blocks.values()) + batch_size * logits_to_keep * shape.vocab * b
    eager_scores = batch_size * H * seq_len**2 * eager_bytes_per_score(dtype) + batch_size * seq_len**2 * b
    kv_cache = 2 * shape.layers * T * KV * d * b
    return {"weights": weights, "activations": activations, "eager_scores": eager_scores, "kv_cache": kv_cache}


def predicted_peak_bytes(shape: ModelShape, seq_len: int, backend: str, batch_size: int = 1,
                         dtype: torch.dtype | str | int = torch.bfloat16) -> int:
    """Modelled peak of a forward pass: weights + activations, plus the N x N tensors for eager and math."""
    m = memory_breakdown(shape, seq_len, batch_size, dtype)
    quadratic = m["eager_scores"] if backend in ("eager", "math") else 0
    return m["weights"] + m["activations"] + quadratic


def memory_curves(shape: ModelShape, seq_lens: list[int], batch_size: int = 1,
                  dtype: torch.dtype | str | int = torch.bfloat16) -> dict[str, list[float]]:
    """GiB per sequence length, ready to plot as dashed lines: the parts and the two modelled totals."""
    parts = [memory_breakdown(shape, n, batch_size, dtype) for n in seq_lens]
    curves = {k: [p[k] / GIB for p in parts] for k in parts[0]}
    curves["total_flash"] = [(p["weights"] + p["activations"]) / GIB for p in parts]
    curves["total_eager"] = [(p["weights"] + p["activations"] + p["eager_scores"]) / GIB for p in parts]
    return {"seq_len": list(seq_lens), **curves}


def max_seq_len(shape: ModelShape, budget_bytes: float, backend: str, batch_size: int = 1,
                dtype: torch.dtype | str | int = torch.bfloat16) -> int:
    """Longest sequence whose modelled peak fits in `budget_bytes` (binary search; 0 if none fits)."""
    lo, hi = 0, 1 << 22
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predicted_peak_bytes(shape, mid, backend, batch_size, dtype) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo
