"""Quantization-aware training through torchao: `prepare_qat` -> train -> `convert_qat`.

prepare: the selected Linear layers become torchao `FakeQuantizedLinear`s that fake-quantize
    weights to INT8 (symmetric, one scale per output channel) and their inputs to INT8 per token:
      activations="int8-dynamic"       symmetric per token (torchao's default inference scheme; on x86,
                                       torch.compile with freezing turns it into one oneDNN qlinear kernel).
                                       torchao's per-token fake quantizer is asymmetric-only, so labkit
                                       supplies the symmetric one (`SymmetricPerTokenFakeQuantizer`).
      activations="int8-dynamic-asym"  asymmetric per token, torchao's own fake quantizer.
      activations=None                 weight-only.
    With embeddings=True every nn.Embedding fake-quantizes its table to INT8 (one scale per row).
convert: the same layers get real INT8 torchao tensors whose numerics match what training saw:
    Linear -> `Int8DynamicActivationInt8WeightConfig` (per-token activations, per-row weights)
              or `Int8WeightOnlyConfig` (weight-only), Embedding -> `IntxWeightOnlyConfig(int8, PerAxis(0))`.
The model works in any float dtype (fp32 on CPU, bf16 on GPU) and is not BERT-specific.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchao.quantization import (
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    IntxWeightOnlyConfig,
    MappingType,
    PerAxis,
    PerRow,
    quantize_,
)
from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
from torchao.quantization.quant_primitives import _fake_quantize_affine, choose_qparams_affine

from labkit.quant.selection import LayerSelection, resolve_layers

ACTIVATION_MODES = ("int8-dynamic", "int8-dynamic-asym", None)
STATE_ATTR = "_labkit_qat"  # the attribute prepare_qat leaves on the model


class QATStateError(RuntimeError):
    """QAT steps called out of order (convert before prepare, prepare twice, ...)."""


@dataclass
class QATState:
    """What `prepare_qat` did to a model, so `convert_qat` knows what to convert."""

    layers: list[str]
    activations: str | None
    embeddings: list[str] = field(default_factory=list)
    converted: bool = False


def qat_state(model: nn.Module) -> QATState | None:
    """The QAT state prepare_qat left on `model`, or None if it was never prepared."""
    return getattr(model, STATE_ATTR, None)


def weight_fake_config() -> IntxFakeQuantizeConfig:
    """INT8, symmetric, one scale per output channel (per row of the weight)."""
    return IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)


def activation_fake_config() -> IntxFakeQuantizeConfig:
    """INT8 per token, asymmetric, scale chosen on the fly (dynamic) as at inference."""
    return IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)


class SymmetricPerTokenFakeQuantizer(nn.Module):
    """Fake-quantize activations to INT8 per token, symmetric, exactly as torchao's Int8Tensor does at
    inference (scale = absmax / 127.5 in fp32, codes clamped to [-128, 127]); rounding is straight-through."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        block = (1,) * (x.ndim - 1) + (x.shape[-1],)
        scale, zero_point = choose_qparams_affine(
            x.detach(), MappingType.SYMMETRIC, block, torch.int8, quant_min=-128, quant_max=127,
            eps=torch.finfo(torch.float32).eps, scale_dtype=torch.float32, zero_point_dtype=torch.int8,
        )
        fq = _fake_quantize_affine(x, block, scale, zero_point, torch.int32, quant_min=-128, quant_max=127)
        return fq.to(x.dtype)


def linear_int8_config(activations: str | None = "int8-dynamic"):
    """The torchao inference config that matches the fake quantization of `activations` mode."""
    _check_activations(activations)
    if activations is None:
        return Int8WeightOnlyConfig(granularity=PerRow())
    mapping = MappingType.ASYMMETRIC if activations == "int8-dynamic-asym" else MappingType.SYMMETRIC
    return Int8DynamicActivationInt8WeightConfig(act_mapping_type=mapping, granularity=PerRow())


def embedding_int8_config() -> IntxWeightOnlyConfig:
    """INT8 weight-only, symmetric, one scale per embedding row (matches `weight_fake_config`)."""
    return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0), mapping_type=MappingType.SYMMETRIC)


def _check_activations(activations: str | None) -> None:
    if activations not in ACTIVATION_MODES:
        raise ValueError(
            f"activations={activations!r} is not supported; use 'int8-dynamic' (INT8 symmetric per-token "
            "activations), 'int8-dynamic-asym' (asymmetric per token) or None (weight-only INT8)"
        )


def _names_filter(names: list[str]):
    chosen = set(names)
    return lambda module, fqn: fqn in chosen


def prepare_qat(
    model: nn.Module,
    layers: LayerSelection = None,
    *,
    activations: str | None = "int8-dynamic",
    embeddings: bool = False,
) -> nn.Module:
    """Insert INT8 fake quantizers on the selected Linear layers (and embeddings); in place, returns `model`."""
    _check_activations(activations)
    if qat_state(model) is not None:
        raise QATStateError("prepare_qat was already called on this model; prepare a fresh copy instead")
    names = resolve_layers(model, layers, (nn.Linear,))
    act = activation_fake_config() if activations == "int8-dynamic-asym" else None
    quantize_(model, QATConfig(activation_config=act, weight_config=weight_fake_config(), step="prepare"),
              filter_fn=_names_filter(names))
    if activations == "int8-dynamic":
        modules = dict(model.named_modules())
        for name in names:
            modules[name].activation_fake_quantizer = SymmetricPerTokenFakeQuantizer()
    emb_names: list[str] = []
    if embeddings:
        emb_names = resolve_layers(model, None, (nn.Embedding,))
        quantize_(model, QATConfig(weight_config=weight_fake_config(), step="prepare"),
                  filter_fn=_names_filter(emb_names))
    setattr(model, STATE_ATTR, QATState(layers=names, activations=activations, embeddings=emb_names))
    return model


def convert_qat(model: nn.Module) -> nn.Module:
    """Replace the fake quantizers by real INT8 torchao tensors (in place, returns `model`)."""
    state = qat_state(model)
    if state is None:
        raise QATStateError(
            "convert_qat called on a model that was never prepared: call "
            "labkit.quant.qat.prepare_qat(model, layers) and train it first"
        )
    if state.converted:
        raise QATStateError("convert_qat was already called on this model")
    quantize_(model, QATConfig(linear_int8_config(state.activations), step="convert"),
              filter_fn=_names_filter(state.layers))
    if state.embeddings:
        quantize_(model, QATConfig(embedding_int8_config(), step="convert"), filter_fn=_names_filter(state.embeddings))
    state.converted = True
    return model
