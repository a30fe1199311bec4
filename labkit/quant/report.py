"""Which modules of a model are really INT8, and which still carry fake quantizers."""

from __future__ import annotations

import torch
from torch import nn

# torchao tensor subclasses that store their data as int8 codes plus scales
_INT8_TENSOR_TYPES = ("Int8Tensor", "IntxUnpackedToInt8Tensor")


def is_int8_weight(t: torch.Tensor | None) -> bool:
    """True when `t` is a torchao quantized tensor whose stored codes are torch.int8."""
    if t is None or type(t).__name__ not in _INT8_TENSOR_TYPES:
        return False
    qdata = getattr(t, "qdata", None)
    return isinstance(qdata, torch.Tensor) and qdata.dtype == torch.int8


def is_labkit_int8(mod: nn.Module) -> bool:
    """True for labkit's `Int8WeightOnlyLinear` (INT8 codes in a `weight_int8` buffer, run by labkit's kernel)."""
    codes = getattr(mod, "weight_int8", None)
    return isinstance(codes, torch.Tensor) and codes.dtype == torch.int8


def int8_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose weight is stored as real INT8 (after convert or PTQ, torchao tensors or labkit's
    `Int8WeightOnlyLinear`), in model order."""
    return [name for name, mod in model.named_modules()
            if is_int8_weight(getattr(mod, "weight", None)) or is_labkit_int8(mod)]


def fake_quantized_modules(model: nn.Module) -> list[str]:
    """Names of the modules that carry torchao fake quantizers (prepared for QAT, not yet converted)."""
    from torchao.quantization.qat.embedding import FakeQuantizedEmbedding
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    return [n for n, m in model.named_modules() if isinstance(m, (FakeQuantizedLinear, FakeQuantizedEmbedding))]


def quant_summary(model: nn.Module) -> dict[str, str]:
    """Module name -> how its weight is stored ("int8 (Int8Tensor, dynamic int8 activations)", "float32", ...)."""
    out: dict[str, str] = {}
    fake = set(fake_quantized_modules(model))
    for name, mod in model.named_modules():
        if name and is_labkit_int8(mod):
            out[name] = "int8 (labkit Int8WeightOnlyLinear, weight-only)"
            continue
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or not name:
            continue
        if is_int8_weight(w):
            if getattr(w, "act_quant_kwargs", None) is None:
                act = "weight-only"
            elif getattr(w, "act_quant_scale", None) is not None:
                act = "static int8 activations"
            else:
                act = "dynamic int8 activations"
            out[name] = f"int8 ({type(w).__name__}, {act})"
        elif name in fake:
            out[name] = f"fake-quant {str(w.dtype).removeprefix('torch.')}"
        else:
            out[name] = str(w.dtype).removeprefix("torch.")
    return out
