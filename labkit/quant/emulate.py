"""A fast stand-in for a converted INT8 dynamic-activation (w8a8) model, with the same numbers, for perplexity.

torchao's eager w8a8 Linear quantizes each token's activations to INT8 (symmetric, one scale per token),
multiplies the INT8 codes by the INT8 weight codes (int32 sums), then scales by the token's and the output
channel's scales. On a GPU that eager path is many times slower than bf16, so a perplexity pass over WikiText-2
costs minutes. `emulated_int8_copy` swaps each such layer for `EmulatedInt8DynamicLinear`, which does the same
arithmetic in float32 on a fast float matmul:

    codes_x, scale_x = torchao's own per-token INT8 quantization of x     (the very same codes)
    acc   = codes_x.float() @ codes_w.float().T      every product |a*b| <= 128*128 is exact in float32
                                                     (and in TF32: codes need 8 significant bits); sums of
                                                     K <= 8192 of them are exact to ~1e-7 relative
    y     = ((acc * scale_x).to(dtype) * scale_w + bias).to(dtype)       torchao's order of rounding

so it differs from torchao's int32 result only by float32 rounding of the sums, far below the bf16 output's own
rounding. The real converted model stays the artifact that is checked (kernels, size); the fast copy is checked
against it on real tokens (`logits_agreement`) before its perplexity is used.
"""

from __future__ import annotations

import copy
import itertools
import time

import torch
import torch.nn.functional as F
from torch import nn

NLL_REL_TOL = 5e-4
"""The fast path's mean next-token NLL on the check batch may differ from the real model's by this fraction."""
TOP1_MIN = 0.98
"""... and at least this share of its next-token predictions (argmax) must be the real model's ..."""
LOGIT_REL_TOL = 2e-3
"""... and its logits may differ from the real model's by this fraction on average (mean |diff| / mean |logit|).
An exact emulation differs by float32 rounding of the sums only (0 on a CPU); leaving out the activation
quantization, a typical slip, moves the logits by ~1-2% even on a tiny random model."""


def _int8_dynamic_weight(linear: nn.Module):
    """The torchao Int8Tensor weight of a w8a8 Linear (symmetric per-token activations), else None."""
    w = getattr(linear, "weight", None)
    if type(w).__name__ != "Int8Tensor" or getattr(w, "act_quant_kwargs", None) is None:
        return None
    return w


class EmulatedInt8DynamicLinear(nn.Module):
    """torchao's INT8 dynamic-activation Linear in float32 arithmetic on the INT8 codes (exact products)."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        w = _int8_dynamic_weight(linear)
        if w is None:
            raise TypeError(f"{type(linear).__name__} has no torchao INT8 dynamic-activation weight to emulate")
        if w.act_pre_scale is not None or w.act_quant_scale is not None:
            raise ValueError("only dynamic activation scales are emulated (no static or pre-scaled activations)")
        if w.zero_point is not None and bool(torch.any(w.zero_point != 0)):
            raise ValueError("only symmetric INT8 weights (zero point 0) are emulated")
        if w.scale.numel() != w.qdata.shape[0]:
            raise ValueError("only per-output-channel INT8 weights are emulated")
        self.act_quant_kwargs = w.act_quant_kwargs
        self.in_features, self.out_features = w.qdata.shape[1], w.qdata.shape[0]
        self.register_buffer("codes_t", w.qdata.detach().t().to(torch.float32).contiguous())  # [K, N]
        self.register_buffer("weight_scale", w.scale.detach().reshape(-1).to(torch.float32))
        bias = getattr(linear, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchao.quantization.quantize_.common.quantize_tensor_kwargs import (
            _choose_quant_func_and_quantize_tensor,
        )

        out_dtype = x.dtype
        xq = _choose_quant_func_and_quantize_tensor(x, self.act_quant_kwargs)
        if xq.zero_point is not None and bool(torch.any(xq.zero_point != 0)):
            raise ValueError("asymmetric activations are not emulated; quantize with symmetric activations")
        codes = xq.qdata.reshape(-1, self.in_features).to(torch.float32)
        acc = codes @ self.codes_t                                   # exact products, float32 sums
        y = (acc * xq.scale.reshape(-1, 1).to(torch.float32)).to(out_dtype)
        y = (y * self.weight_scale).reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y.to(out_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, emulated int8 x int8 in fp32"


def emulated_int8_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of `model` whose torchao w8a8 Linears are `EmulatedInt8DynamicLinear`s; (copy, their names).
    The copy shares nothing with `model` that either could change."""
    fast = copy.deepcopy(model)
    names = [n for n, m in fast.named_modules() if isinstance(m, nn.Linear) and _int8_dynamic_weight(m) is not None]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = fast.get_submodule(parent_name) if parent_name else fast
        setattr(parent, child, EmulatedInt8DynamicLinear(getattr(parent, child)))
    return fast, names


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer."""
    return next(itertools.chain(model.parameters(), model.buffers())).device


def _forward(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    device = model_device(model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), use_cache=False).logits.float()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return logits, time.perf_counter() - t0


def logits_agreement(fast: nn.Module, real: nn.Module, ids: torch.Tensor, *, nll_rel_tol: float = NLL_REL_TOL,
                     top1_min: float = TOP1_MIN, logit_rel_tol: float = LOGIT_REL_TOL) -> dict:
    """Run both models on the token ids [batch, seq]; how far the fast model's logits are from the real one's.

    `ok` when the mean next-token NLL differs by at most `nll_rel_tol` (relative), the next-token argmax agrees
    on at least `top1_min` of the positions and mean |logit difference| <= `logit_rel_tol` x mean |logit|.
    Returns the numbers, the tolerances and each forward's seconds."""
    real_logits, real_s = _forward(real, ids)
    fast_logits, fast_s = _forward(fast, ids)
    d = logit_distance(fast_logits, real_logits, ids[:, 1:].to(real_logits.device))
    ok = bool(d["nll_rel_diff"] <= nll_rel_tol and d["top1_agreement"] >= top1_min
              and d["logit_rel_diff"] <= logit_rel_tol and torch.isfinite(fast_logits).all())
    return {"tokens": int(ids.numel()), "nll_real": d["nll_b"], "nll_fast": d["nll_a"],
            "nll_rel_diff": d["nll_rel_diff"], "max_abs_logit_diff": d["max_abs_logit_diff"],
            "mean_abs_logit_diff": d["mean_abs_logit_diff"], "mean_abs_logit": d["mean_abs_logit"],
            "logit_rel_diff": d["logit_rel_diff"], "top1_agreement": d["top1_agreement"],
            "tolerance": {"nll_rel": nll_rel_tol, "top1_min": top1_min, "logit_rel": logit_rel_tol}, "ok": ok,
            "real_s": real_s, "fast_s": fast_s}


def logit_distance(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor) -> dict:
    """How far logits `a` are from logits `b` ([..., n, vocab], position i predicting targets[..., i], n - 1 of
    them): each one's mean next-token NLL, their relative NLL difference, mean |a - b| against mean |b|, and how
    often their argmax agrees (every position)."""
    def nll(logits: torch.Tensor) -> float:
        return float(F.cross_entropy(logits[..., :-1, :].reshape(-1, logits.shape[-1]), targets.reshape(-1)))

    nll_a, nll_b = nll(a), nll(b)
    diff = (a - b).abs()
    scale = float(b.abs().mean())
    return {"nll_a": nll_a, "nll_b": nll_b, "nll_rel_diff": abs(nll_a - nll_b) / max(abs(nll_b), 1e-12),
            "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()), "mean_abs_logit": scale,
            "logit_rel_diff": float(diff.mean()) / max(scale, 1e-12),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


__all__ = ["NLL_REL_TOL", "TOP1_MIN", "EmulatedInt8DynamicLinear", "emulated_int8_copy", "logit_distance",
           "logits_agreement", "model_device"]
