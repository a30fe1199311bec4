"""A fake quantizer written from scratch, small enough to read in one screen.

Fake quantization = quantize to an integer grid, then dequantize straight back to float:
    q = clamp(round(x / scale) + zero_point, qmin, qmax)      (the INT8 value that would be stored)
    x_hat = (q - zero_point) * scale                          (what the float model then computes with)
`round` has zero gradient almost everywhere, so training through it needs the straight-through
estimator (STE): the backward pass pretends the quantizer was the identity inside [qmin, qmax] and
passes no gradient where the value was clipped. torchao's QAT does exactly this; this file only teaches it.
"""

from __future__ import annotations

import torch


def qparams(x: torch.Tensor, bits: int = 8, symmetric: bool = True, dim: int | None = None):
    """(scale, zero_point, qmin, qmax) for `x`: per tensor (dim=None) or one pair per slice along `dim`."""
    if dim is None:
        lo, hi = x.min(), x.max()
    else:
        other = [d for d in range(x.ndim) if d != dim % x.ndim]
        lo, hi = x.amin(dim=other, keepdim=True), x.amax(dim=other, keepdim=True)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # the grid must contain 0 exactly (padding, ReLU zeros)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    eps = torch.finfo(torch.float32).eps
    if symmetric:  # zero_point = 0, the grid is centred: what INT8 weights use
        scale = (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).clamp(min=eps)
        zero_point = torch.zeros_like(scale)
    else:  # asymmetric: the grid covers [lo, hi] exactly; used for activations
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=eps)
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero_point, qmin, qmax


class _RoundSTE(torch.autograd.Function):
    """round() forward, identity backward: the straight-through estimator."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def fake_quantize(x: torch.Tensor, scale, zero_point, qmin: int = -128, qmax: int = 127) -> torch.Tensor:
    """Quantize-dequantize `x`; gradients flow straight through, except where values were clipped."""
    q = torch.clamp(_RoundSTE.apply(x / scale) + zero_point, qmin, qmax)  # clamp's gradient is 0 outside
    return (q - zero_point) * scale


def quantize(x: torch.Tensor, scale, zero_point, qmin: int = -128, qmax: int = 127) -> torch.Tensor:
    """The integer codes that would be stored (as int8)."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).to(torch.int8)


def fake_quantize_tensor(x: torch.Tensor, bits: int = 8, symmetric: bool = True, dim: int | None = None):
    """Choose qparams from `x` itself (dynamic) and fake-quantize it; returns (x_hat, scale, zero_point)."""
    scale, zp, qmin, qmax = qparams(x.detach(), bits, symmetric, dim)
    return fake_quantize(x, scale, zp, qmin, qmax), scale, zp
