"""`Int8WeightOnlyLinear`: a Linear whose weight is INT8 (one scale per output channel), run by labkit's kernel.

    quantize_(model, LabkitInt8WeightOnlyConfig(), filter_fn=selection_filter(model, FEED_FORWARD))

Small batches of tokens (decode, M <= 16) go through labkit's Triton kernel (`labkit.quant.int8_kernel`), which
reads the int8 codes and dequantizes them in registers; larger ones (prefill, compute-bound) dequantize the
weight to bf16 once and use the matmul library (cuBLAS), because there the arithmetic dominates, not the bytes.

The forward is one PyTorch custom operator, `labkit::int8_weight_only_linear`, with a "fake" (shape-only)
implementation, so torch.compile traces straight over it (no graph break) and CUDA graphs capture it.
The numbers are torchao's per-row INT8 weight-only numbers (scale = max|row| / 127.5), so a layer converted
from torchao QAT (fake-quantized or converted) keeps exactly the weights that training saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from labkit.quant.int8_kernel import SMALL_M, int8_weight_only_mm, quantize_per_channel, triton_available

OP_NAME = "labkit::int8_weight_only_linear"


def _kernel_usable(x: torch.Tensor) -> bool:
    """The kernel on a GPU; on a CPU only when TRITON_INTERPRET=1 asks for the (slow) interpreter explicitly."""
    return triton_available(x.device)[0]


@torch.library.custom_op(OP_NAME, mutates_args=())
def int8_weight_only_linear(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor,
                            bias: torch.Tensor | None = None, small_m: int = SMALL_M) -> torch.Tensor:
    """y = x @ (weight_int8 * scale[:, None]).T + bias, choosing the kernel by the number of rows of x."""
    m = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if 0 < m <= small_m and _kernel_usable(x):
        y = int8_weight_only_mm(x, weight_int8, scale)            # labkit's Triton kernel (memory-bound path)
    else:
        w = weight_int8.to(x.dtype) * scale.to(x.dtype)[:, None]   # dequantize once, then the matmul library
        y = torch.nn.functional.linear(x, w)
    return y if bias is None else y + bias


@int8_weight_only_linear.register_fake
def _(x, weight_int8, scale, bias=None, small_m=SMALL_M):
    return x.new_empty((*x.shape[:-1], weight_int8.shape[0]))


def _setup_backward(ctx, inputs, output) -> None:
    x, weight_int8, scale, bias, _ = inputs
    ctx.save_for_backward(weight_int8, scale)
    ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None


def _backward(ctx, grad):
    # The INT8 weight is frozen (no gradient); the input and the bias get theirs, so the layer can sit inside
    # a model that is fine-tuned around it (or under torch.compile in training mode).
    weight_int8, scale = ctx.saved_tensors
    grad_x = grad @ (weight_int8.to(grad.dtype) * scale.to(grad.dtype)[:, None])
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
    return grad_x.to(ctx.x_dtype), None, None, grad_bias, None


int8_weight_only_linear.register_autograd(_backward, setup_context=_setup_backward)


class Int8WeightOnlyLinear(nn.Module):
    """A Linear with INT8 weight codes [out, in] and fp32 per-output-channel scales; activations stay float."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self.small_m = SMALL_M

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                   dtype: torch.dtype = torch.bfloat16) -> Int8WeightOnlyLinear:
        """From int8 codes [out, in] and scales [out] (or [out, 1])."""
        out_f, in_f = codes.shape
        mod = cls(in_f, out_f, bias=bias is not None, device=codes.device, dtype=dtype)
        mod.weight_int8.copy_(codes.to(torch.int8))
        mod.weight_scale.copy_(scale.reshape(out_f).to(torch.float32))
        if bias is not None:
            mod.bias.data.copy_(bias.detach().to(dtype))
        return mod

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8WeightOnlyLinear:
        """Quantize a float nn.Linear (or a torchao QAT `FakeQuantizedLinear`, or a Linear whose weight is
        already a torchao per-row Int8Tensor) to INT8 weight-only, symmetric, one scale per output channel."""
        weight = linear.weight
        bias = linear.bias
        dtype = bias.dtype if bias is not None else _float_dtype(weight)
        codes_scale = _torchao_int8_parts(weight)
        if codes_scale is None:
            codes_scale = quantize_per_channel(weight.detach())
        return cls.from_codes(*codes_scale, bias=bias, dtype=dtype)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight these codes stand for (codes x scale)."""
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_weight_only_linear(x, self.weight_int8, self.weight_scale, self.bias, self.small_m)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int8 per-channel, kernel for M <= {self.small_m}")


def _float_dtype(weight: torch.Tensor) -> torch.dtype:
    dtype = getattr(weight, "dtype", torch.bfloat16)
    return dtype if dtype.is_floating_point else torch.bfloat16


def _torchao_int8_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(codes, scale) of a torchao symmetric per-row Int8Tensor weight; None for a plain float weight."""
    from labkit.quant.report import is_int8_weight

    if not is_int8_weight(weight):
        return None
    qdata, scale = weight.qdata, weight.scale
    zero_point = getattr(weight, "zero_point", None)
    if zero_point is not None and bool(torch.any(zero_point != 0)):
        raise ValueError("only symmetric INT8 weights (zero point 0) can move to Int8WeightOnlyLinear")
    if scale.numel() != qdata.shape[0]:
        raise ValueError(f"only per-output-channel INT8 weights are supported; scale has {scale.numel()} values "
                         f"for {qdata.shape[0]} channels")
    return qdata.detach(), scale.detach().reshape(-1)


# ---------------------------------------------------------------------------------------------------------------
# torchao integration: quantize_(model, LabkitInt8WeightOnlyConfig(), filter_fn=...)


try:
    from torchao.core.config import AOBaseConfig
    from torchao.quantization.transform_module import register_quantize_module_handler
except ImportError:  # pragma: no cover - torchao is a labkit dependency; kept importable without it
    AOBaseConfig, register_quantize_module_handler = object, None


@dataclass
class LabkitInt8WeightOnlyConfig(AOBaseConfig):
    """torchao config: replace each selected Linear by an `Int8WeightOnlyLinear` (labkit's INT8 kernel).

    Accepts float Linears, torchao QAT-prepared `FakeQuantizedLinear`s (their fake quantizers describe the same
    per-channel INT8 numbers) and Linears whose weight is a per-row INT8 torchao tensor (after convert/PTQ).
    `small_m`: up to this many tokens per call use the Triton kernel."""

    small_m: int = SMALL_M


if register_quantize_module_handler is not None:

    @register_quantize_module_handler(LabkitInt8WeightOnlyConfig)
    def _labkit_int8_transform(module: nn.Module, config: LabkitInt8WeightOnlyConfig) -> nn.Module:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"LabkitInt8WeightOnlyConfig applies to nn.Linear layers, got {type(module).__name__}")
        new = Int8WeightOnlyLinear.from_float(module)
        new.small_m = config.small_m
        return new


def labkit_int8_modules(model: nn.Module) -> list[str]:
    """Names of the `Int8WeightOnlyLinear` modules of `model`, in model order."""
    return [n for n, m in model.named_modules() if isinstance(m, Int8WeightOnlyLinear)]


__all__ = [
    "Int8WeightOnlyLinear",
    "LabkitInt8WeightOnlyConfig",
    "OP_NAME",
    "int8_weight_only_linear",
    "labkit_int8_modules",
]
