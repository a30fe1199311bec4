"""FP8 row-wise: the other 8-bit format, native on Hopper (H100/H200) and newer GPUs (compute capability >= 8.9).

Weights AND activations become float8 e4m3 with one scale per row (per output channel for weights, per token
for activations), and the matmul runs on the FP8 tensor cores (`torch._scaled_mm`), twice the bf16 rate.
Unlike INT8 there is no integer accumulation to rescale and the format keeps a few exponent bits, so it needs no
calibration and loses little. Through torchao:

    quantize_(model, fp8_rowwise_config(), filter_fn=...)              post-training, dynamic activations
    prepare_fp8_qat(model, layers) -> fine-tune -> convert_fp8_qat(model)  its QAT counterpart (fake FP8)

QAT rounds straight through: the gradient passes the fake quantizer unchanged, each row's scale a constant, as
in the INT8 fake quantizers (`StraightThroughFloat8FakeQuantizer`).
"""

from __future__ import annotations

import torch
from torch import nn
from torchao.quantization.qat.fake_quantizer import Float8FakeQuantizer
from torchao.quantization.quant_primitives import (
    _choose_scale_float8,
    _dequantize_affine_float8,
    _quantize_affine_float8,
)
from torchao.quantization.utils import get_block_size

from labkit.quant.selection import LayerSelection, selection_filter

MIN_CAPABILITY = (8, 9)


def fp8_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """None when FP8 matmuls can run on `device`; otherwise why not (CPU, older GPU)."""
    device = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if device.type != "cuda" or not torch.cuda.is_available():
        return "FP8 row-wise needs an NVIDIA GPU with compute capability >= 8.9 (Ada/Hopper); this is a CPU"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return (f"FP8 row-wise needs compute capability >= 8.9 (Ada/Hopper FP8 tensor cores); "
                f"{torch.cuda.get_device_name(device)} is {cap[0]}.{cap[1]}")
    return None


def fp8_rowwise_config():
    """torchao's FP8 dynamic-activation / FP8-weight config, one scale per row (PerRow)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def quantize_fp8_rowwise(model: nn.Module, layers: LayerSelection = None) -> nn.Module:
    """FP8 row-wise weights and dynamic activations on the selected Linear layers (in place; GPU >= 8.9)."""
    from torchao.quantization import quantize_

    why = fp8_unavailable_reason(next(model.parameters()).device)
    if why:
        raise RuntimeError(why)
    quantize_(model, fp8_rowwise_config(), filter_fn=selection_filter(model, layers))
    return model


class _Float8RoundTrip(torch.autograd.Function):
    """Row-wise e4m3 quantize + dequantize in the forward pass; the identity in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, granularity, float8_dtype: torch.dtype, lb: float | None,
                ub: float | None) -> torch.Tensor:
        scale = _choose_scale_float8(x, get_block_size(x.shape, granularity), float8_dtype, hp_value_lb=lb,
                                     hp_value_ub=ub)
        return _dequantize_affine_float8(_quantize_affine_float8(x, scale, float8_dtype), scale, x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None, None, None


class StraightThroughFloat8FakeQuantizer(Float8FakeQuantizer):
    """torchao's FP8 fake quantizer with the same forward numerics (those of Float8Tensor: scale = row absmax /
    448, e4m3 rounding) and a true straight-through backward: the gradient passes unchanged, the scale a constant.

    torchao's own (0.18) backward runs back through its float8 cast, which casts the gradient to e4m3 unscaled:
    a weight's gradient times the weight's ~1e-4 scale underflows to zero, so the selected layers barely train
    (SmolLM2-135M: 1e4 times less weight change than the float fine-tune), and the activations' gradients reach
    the layers below rounded to e4m3, so QAT ended worse than no fine-tuning."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        cfg = self.config
        return _Float8RoundTrip.apply(x, cfg.granularity, cfg.dtype, cfg.hp_value_lb, cfg.hp_value_ub)


def prepare_fp8_qat(model: nn.Module, layers: LayerSelection = None) -> nn.Module:
    """QAT for FP8 row-wise: fake-quantize weights and activations of the selected layers to FP8 (runs anywhere
    torch has float8 dtypes, CPU included); train, then `convert_fp8_qat`. The fake quantizers are torchao's with a
    straight-through backward (`StraightThroughFloat8FakeQuantizer`): the same forward, a gradient that trains."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(fp8_rowwise_config(), step="prepare"), filter_fn=selection_filter(model, layers))
    for mod in model.modules():
        for attr in ("activation_fake_quantizer", "weight_fake_quantizer"):
            fq = getattr(mod, attr, None)
            if type(fq) is Float8FakeQuantizer:
                setattr(mod, attr, StraightThroughFloat8FakeQuantizer(fq.config))
    return model


def convert_fp8_qat(model: nn.Module) -> nn.Module:
    """Turn the FP8 fake quantizers into real FP8 row-wise weights (GPU >= 8.9 for the matmuls to run)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    quantize_(model, QATConfig(fp8_rowwise_config(), step="convert"),
              filter_fn=lambda m, fqn: isinstance(m, FakeQuantizedLinear))
    return model


def fp8_modules(model: nn.Module) -> list[str]:
    """Names of modules whose weight is a torchao float8 tensor."""
    out = []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        qdata = getattr(w, "qdata", None)
        if isinstance(qdata, torch.Tensor) and qdata.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            out.append(name)
    return out


__all__ = ["StraightThroughFloat8FakeQuantizer", "convert_fp8_qat", "fp8_modules", "fp8_rowwise_config",
           "fp8_unavailable_reason", "prepare_fp8_qat", "quantize_fp8_rowwise"]
