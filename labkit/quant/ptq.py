"""Post-training quantization (PTQ) baselines through torchao `quantize_`, on the same layer selections as QAT.

dynamic INT8      weights INT8 per channel; activations quantized per token at run time (no calibration)
weight-only INT8  weights INT8 per channel; activations stay float
static INT8       weights INT8 per channel; ONE activation scale/zero point per layer, fixed ahead of time
                  from calibration batches (min/max observer); cheaper at run time, blunter
embeddings INT8   embedding tables INT8 weight-only, one scale per row
All functions work in place and return the model; they are model-agnostic (BERT, Llama, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torchao.quantization import (
    Int8DynamicActivationInt8WeightConfig,
    Int8StaticActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    MappingType,
    PerRow,
    PerTensor,
    quantize_,
)

from labkit.quant.qat import embedding_int8_config, linear_int8_config
from labkit.quant.selection import LayerSelection, resolve_layers, selection_filter


def quantize_dynamic_int8(model: nn.Module, layers: LayerSelection = None) -> nn.Module:
    """INT8 weights and per-token dynamic INT8 activations (the same kernels QAT converts to)."""
    quantize_(model, linear_int8_config("int8-dynamic"), filter_fn=selection_filter(model, layers))
    return model


def quantize_weight_only_int8(model: nn.Module, layers: LayerSelection = None) -> nn.Module:
    """INT8 weights (per channel), float activations: halves/quarters weight memory, no activation error."""
    quantize_(model, Int8WeightOnlyConfig(granularity=PerRow()), filter_fn=selection_filter(model, layers))
    return model


def quantize_embeddings_int8(model: nn.Module, layers: LayerSelection = None) -> nn.Module:
    """INT8 weight-only embedding tables (one scale per row); `layers` selects among nn.Embedding modules."""
    quantize_(model, embedding_int8_config(), filter_fn=selection_filter(model, layers, (nn.Embedding,)))
    return model


def _run(model: nn.Module, batch) -> None:
    if isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


class _MinMax:
    """Running min/max of a layer's input over the calibration batches."""

    def __init__(self) -> None:
        self.lo, self.hi, self.ndim, self.calls = None, None, None, 0

    def __call__(self, module, args) -> None:
        x = args[0].detach().float()
        lo, hi = x.min(), x.max()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.ndim, self.calls = x.ndim, self.calls + 1


def calibrate(model: nn.Module, names: list[str], calibration_batches: Iterable) -> dict[str, _MinMax]:
    """Run the batches through the model, recording the input range of each named module."""
    modules = dict(model.named_modules())
    observers = {n: _MinMax() for n in names}
    handles = [modules[n].register_forward_pre_hook(observers[n]) for n in names]
    try:
        with torch.inference_mode():
            for batch in calibration_batches:
                _run(model, batch)
    finally:
        for h in handles:
            h.remove()
    silent = [n for n, o in observers.items() if o.calls == 0]
    if len(silent) == len(names):
        raise ValueError("calibration_batches was empty: pass at least one batch of real inputs to calibrate on")
    if silent:
        raise ValueError(f"{len(silent)} selected layer(s) never ran during calibration: {silent[:4]}")
    return observers


def static_qparams(obs: _MinMax) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric per-tensor INT8 scale and zero point covering [min, max] (and 0), shaped like the input."""
    lo, hi = obs.lo.clamp(max=0), obs.hi.clamp(min=0)
    scale = ((hi - lo) / 255.0).clamp(min=torch.finfo(torch.float32).eps)
    zero_point = (-128 - torch.round(lo / scale)).clamp(-128, 127).to(torch.int8)
    shape = (1,) * obs.ndim
    return scale.reshape(shape), zero_point.reshape(shape)


def quantize_static_int8(model: nn.Module, layers: LayerSelection, calibration_batches: Iterable) -> nn.Module:
    """INT8 weights and static INT8 activations (per-tensor scale from a min/max calibration pass)."""
    names = resolve_layers(model, layers)
    observers = calibrate(model, names, calibration_batches)
    for name in names:
        scale, zero_point = static_qparams(observers[name])
        config = Int8StaticActivationInt8WeightConfig(
            act_quant_scale=scale, act_quant_zero_point=zero_point,
            granularity=[PerTensor(), PerRow()], act_mapping_type=MappingType.ASYMMETRIC,
        )
        quantize_(model, config, filter_fn=lambda m, fqn, name=name: fqn == name)
    return model


__all__ = [
    "Int8DynamicActivationInt8WeightConfig",
    "calibrate",
    "quantize_dynamic_int8",
    "quantize_embeddings_int8",
    "quantize_static_int8",
    "quantize_weight_only_int8",
    "static_qparams",
]
