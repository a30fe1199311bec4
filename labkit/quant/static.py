"""Static INT8 activations: one fixed scale per tensor, calibrated (PTQ) or learned (QAT), on the same numerics.

A static model keeps one (scale, zero point) per activation tensor, fixed before deployment, so the runtime
multiplies integer codes without measuring anything at run time. The quantizer is the runtime's own formula
(ONNX QuantizeLinear / DequantizeLinear):
    q     = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)     uint8 [0, 255] or int8 [-128, 127]
    x_hat = (q - zero_point) * scale
Values beyond the calibrated range clip to the end of the grid, exactly as the runtime does (`clipping_demo`).

Where it quantizes (`StaticInt8Config`; every site is optional except the Linear inputs):
    linear inputs      the input of each selected Linear (as the PTQ-static baseline of `labkit.quant.ptq`)
    linear outputs     the output of the Linears named by `outputs` (BERT: the attention and FFN output
                       projections, whose outputs feed the residual sums: where BERT's outlier dimensions live)
    attention          query, key and value entering QK^T and PV, and the softmax probabilities (uint8, zero
                       point 0), through transformers' `AttentionInterface` ("labkit_static_int8")
    layernorm inputs   the residual sum entering each LayerNorm
Weights: per output channel symmetric INT8 (or group-wise INT4 with `weight_bits=4`), fake-quantized by torchao's
`IntxFakeQuantizer`, the same as the dynamic QAT path. `weight_bits=7` keeps the codes in [-64, 63] (stored as
INT8): x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply u8 x s8 with VPMADDUBSW, whose 16-bit sums of
two products saturate for full-range codes (255 x 127 x 2 > 32767); with 7-bit weights they cannot, so the
deployed INT8 GEMM computes exactly what the model trained with, on every x86 CPU.

PTQ-static and QAT-static are the same modules: `prepare_static` inserts the quantizers, `calibrate_static`
sets each scale from an observer on training rows ("minmax", "percentile" or "mse"), `freeze_scales` makes it
PTQ; QAT trains the calibrated scales together with the weights (LSQ, Esser et al. 2020: straight-through
rounding, and the scale's gradient multiplied by 1 / sqrt(elements per sample x qmax) so that scale and weight
steps are of a similar relative size). Both export through `labkit.deploy.qdq_export` with the same scales.

Why labkit's own activation quantizer and not torchao's `IntxFakeQuantizeConfig(is_dynamic=False)`: torchao's
fake quantizers know per-token and per-channel/group granularity only (no per-tensor activation scale), fix
a static scale from whichever batch comes first, learn the zero point as a float (not an integer a runtime can
store) and have no LSQ gradient scaling. The weights keep torchao's fake quantizer (its rounding is exported).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit.quant.selection import LayerSelection, resolve_layers

DTYPES = {"uint8": (0, 255), "int8": (-128, 127)}
OBSERVERS = ("minmax", "percentile", "mse")
ATTENTION_NAME = "labkit_static_int8"
STATE_ATTR = "_labkit_static"
SAMPLE_PER_BATCH = 1 << 14  # values each observer keeps from a batch for percentile / MSE searches
SAMPLE_MAX = 1 << 18
SHARED_INPUTS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class EmptyCalibrationError(ValueError):
    """The calibration set had no rows."""


# ------------------------------------------------------------------------------------------- autograd


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)  # half to even, as QuantizeLinear

    @staticmethod
    def backward(ctx, grad):
        return grad


class _GradScale(torch.autograd.Function):
    """Identity forward (bit for bit), gradient times `g` backward: LSQ's scale-gradient scaling."""

    @staticmethod
    def forward(ctx, x, g: float):
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


def fake_quantize_static(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                         grad_scale: float = 1.0) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear of `x` with a per-tensor (scale, zero point); differentiable in x
    (straight-through inside the grid, zero where clipped) and in scale (LSQ)."""
    s = _GradScale.apply(scale, grad_scale) if scale.requires_grad else scale
    q = torch.clamp(_RoundSTE.apply(x / s) + zero_point, qmin, qmax)
    return (q - zero_point) * s


# ------------------------------------------------------------------------------------------- observers


class Observer:
    """Running min/max and a bounded random sample of what a tensor held during calibration."""

    def __init__(self, kind: str = "minmax", percentile: float = 99.99) -> None:
        if kind not in OBSERVERS:
            raise ValueError(f"observer={kind!r} is not an observer; use one of {OBSERVERS}")
        self.kind, self.percentile = kind, percentile
        self.lo = self.hi = None
        self.samples: list[torch.Tensor] = []
        self.kept = 0
        self.calls = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        lo, hi = x.min(), x.max()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.calls += 1
        if self.kind != "minmax" and self.kept < SAMPLE_MAX:
            g = torch.Generator().manual_seed(self.calls)
            pick = x if x.numel() <= SAMPLE_PER_BATCH else x[
                torch.randint(0, x.numel(), (SAMPLE_PER_BATCH,), generator=g)]
            self.samples.append(pick)
            self.kept += pick.numel()

    def range(self, qmin: int, qmax: int, symmetric: bool) -> tuple[float, float]:
        """The (lo, hi) clipping range this observer chooses for a grid of qmin..qmax."""
        if self.lo is None:
            raise ValueError("the observer saw no values")
        lo, hi = float(self.lo), float(self.hi)
        if self.kind == "minmax":
            return lo, hi
        sample = torch.cat(self.samples + [self.lo.reshape(1), self.hi.reshape(1)])
        if self.kind == "percentile":
            p = self.percentile / 100
            return float(torch.quantile(sample, 1 - p)), float(torch.quantile(sample, p))
        best, best_err = (lo, hi), math.inf  # "mse": the clip fraction of [lo, hi] with the least squared error
        for frac in torch.linspace(0.05, 1.0, 48).tolist():
            s, z = qparams_for_range(lo * frac, hi * frac, qmin, qmax, symmetric)
            err = float(((fake_quantize_static(sample, s, z, qmin, qmax) - sample) ** 2).mean())
            if err < best_err:
                best, best_err = (lo * frac, hi * frac), err
        return best


def qparams_for_range(lo: float, hi: float, qmin: int, qmax: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of the grid qmin..qmax covering [lo, hi] (and 0); symmetric: zero point 0 (int8) or
    qmin (uint8 of non-negative values such as softmax probabilities)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        if qmin == 0:  # unsigned symmetric: [0, hi]
            return torch.tensor(max(hi / qmax, eps)), torch.tensor(0.0)
        return torch.tensor(max(max(-lo, hi) / qmax, eps)), torch.tensor(0.0)
    scale = max((hi - lo) / (qmax - qmin), eps)
    zp = min(max(qmin - round(lo / scale), qmin), qmax)
    return torch.tensor(scale), torch.tensor(float(zp))


# ------------------------------------------------------------------------------------------- the quantizer


class StaticQuantizer(nn.Module):
    """Per-tensor static fake quantizer with an LSQ-learnable scale and a fixed integer zero point.

    modes: "observe" (calibration: records, passes x through), "quantize", "off" (passes x through)."""

    def __init__(self, dtype: str = "uint8", symmetric: bool = False, observer: str = "minmax") -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; use one of {tuple(DTYPES)}")
        self.dtype, self.symmetric = dtype, symmetric
        self.qmin, self.qmax = DTYPES[dtype]
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.observer_kind = observer
        self.mode = "observe"
        self.observer: Observer | None = Observer(observer)
        self.calibrated = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self.observer.update(x)
            return x
        if self.mode == "off":
            return x
        n = x[0].numel() if x.ndim > 1 else x.numel()
        return fake_quantize_static(x, self.scale, self.zero_point, self.qmin, self.qmax,
                                    1.0 / math.sqrt(max(1, n) * self.qmax))

    def finish_calibration(self) -> None:
        """Set scale and zero point from the observer, then quantize."""
        if self.observer is None or self.observer.calls == 0:
            raise ValueError("this quantizer saw no values during calibration")
        lo, hi = self.observer.range(self.qmin, self.qmax, self.symmetric)
        scale, zp = qparams_for_range(lo, hi, self.qmin, self.qmax, self.symmetric)
        with torch.no_grad():
            self.scale.copy_(scale)
            self.zero_point.copy_(zp)
        self.observer, self.mode, self.calibrated = None, "quantize", True

    def clip_range(self) -> tuple[float, float]:
        """The float values at the two ends of the grid: anything outside clips to them."""
        s, z = float(self.scale), float(self.zero_point)
        return (self.qmin - z) * s, (self.qmax - z) * s

    def extra_repr(self) -> str:
        return (f"{self.dtype}, {'symmetric' if self.symmetric else 'asymmetric'}, mode={self.mode}, "
                f"scale={float(self.scale):.4g}, zero_point={int(self.zero_point)}")


def clipping_demo(quantizer: StaticQuantizer, values) -> dict:
    """What a calibrated quantizer (and the runtime) does to `values`, some beyond its range: they clip."""
    if not quantizer.calibrated:
        raise ValueError("calibrate the quantizer first (calibrate_static), so it has a range to clip to")
    x = torch.as_tensor(values, dtype=torch.float32)
    with torch.no_grad():
        out = fake_quantize_static(x, quantizer.scale.detach(), quantizer.zero_point, quantizer.qmin, quantizer.qmax)
    lo, hi = quantizer.clip_range()
    return {"range": (lo, hi), "inputs": x.tolist(), "outputs": out.tolist(),
            "clipped": [bool(v < lo or v > hi) for v in x.tolist()]}


# ------------------------------------------------------------------------------------------- modules


class StaticQuantLinear(nn.Linear):
    """nn.Linear with a static input quantizer, torchao's weight fake quantizer, and an optional output one."""

    def __init__(self, linear: nn.Linear, weight_config, input_q: StaticQuantizer | None,
                 output_q: StaticQuantizer | None) -> None:
        from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

        super().__init__(linear.in_features, linear.out_features, linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.weight_fake_quantizer = IntxFakeQuantizer(weight_config)
        self.input_quantizer = input_q
        self.output_quantizer = output_q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        y = F.linear(x, self.weight_fake_quantizer(self.weight), self.bias)
        return self.output_quantizer(y) if self.output_quantizer is not None else y


class StaticQuantLayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose input (BERT: the residual sum) is quantized first."""

    def __init__(self, ln: nn.LayerNorm, input_q: StaticQuantizer) -> None:
        super().__init__(ln.normalized_shape, ln.eps, ln.elementwise_affine, device=ln.weight.device)
        with torch.no_grad():
            self.weight.copy_(ln.weight)
            self.bias.copy_(ln.bias)
        self.input_quantizer = input_q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_quantizer(x))


class AttentionQuantizers(nn.Module):
    """The four static quantizers of one self-attention: query, key, value and the softmax probabilities."""

    def __init__(self, dtype: str, observer: str) -> None:
        super().__init__()
        self.query = StaticQuantizer(dtype, dtype == "int8", observer)
        self.key = StaticQuantizer(dtype, dtype == "int8", observer)
        self.value = StaticQuantizer(dtype, dtype == "int8", observer)
        self.probs = StaticQuantizer("uint8", True, observer)  # [0, 1]: zero point 0


def static_int8_attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0,
                          **kwargs):
    """Eager attention with query, key, value and the probabilities through the module's static quantizers."""
    qz = getattr(module, "static_quantizers", None)
    if qz is not None:
        query, key, value = qz.query(query), qz.key(key), qz.value(value)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1)
    if qz is not None:
        probs = qz.probs(probs)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def register_attention() -> None:
    """Make "labkit_static_int8" an attn_implementation transformers knows (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(ATTENTION_NAME, static_int8_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


# ------------------------------------------------------------------------------------------- config + API


@dataclass
class StaticInt8Config:
    """What `prepare_static` quantizes (see the module doc); torchao-style: `quantize_static_(model, config)`."""

    layers: LayerSelection = r"^bert\.(encoder|pooler)\."
    outputs: str | None = None  # regex over the selected Linear names whose OUTPUT is quantized too
    attention: bool = False
    layernorm_inputs: bool = False
    activation_dtype: str = "uint8"  # "uint8" asymmetric (ORT's default) or "int8" symmetric
    observer: str = "minmax"
    weight_bits: int = 8  # 8 or 7 (codes in [-64, 63]): per output channel; 4: group-wise
    weight_group_size: int = 32

    def validate(self) -> None:
        if self.activation_dtype not in DTYPES:
            raise ValueError(f"activation_dtype={self.activation_dtype!r}; use one of {tuple(DTYPES)}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer={self.observer!r} is not an observer; use one of {OBSERVERS}")
        if self.weight_bits not in (4, 7, 8):
            raise ValueError(f"weight_bits={self.weight_bits} is not supported; use 8 or 7 (per channel) or 4 "
                             "(group-wise)")

    def weight_config(self):
        from torchao.quantization.qat import IntxFakeQuantizeConfig

        if self.weight_bits in (7, 8):
            dtype = torch.int8 if self.weight_bits == 8 else torch.int7
            return IntxFakeQuantizeConfig(dtype, "per_channel", is_symmetric=True)
        return IntxFakeQuantizeConfig(torch.int4, group_size=self.weight_group_size, is_symmetric=True)


@dataclass
class StaticState:
    config: StaticInt8Config
    linears: list[str]
    layernorms: list[str]
    attentions: list[str]


def static_state(model: nn.Module) -> StaticState | None:
    return getattr(model, STATE_ATTR, None)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def prepare_static(model: nn.Module, config: StaticInt8Config | None = None) -> nn.Module:
    """Insert the static quantizers (in observe mode) and weight fake quantizers; in place, returns `model`."""
    config = config or StaticInt8Config()
    config.validate()
    if static_state(model) is not None:
        raise ValueError("prepare_static was already called on this model; prepare a fresh copy instead")
    dt, obs = config.activation_dtype, config.observer
    sym = dt == "int8"
    names = resolve_layers(model, config.layers)
    out_re = re.compile(config.outputs) if config.outputs else None
    modules = dict(model.named_modules())
    shared: dict[str, StaticQuantizer] = {}  # Linears that read the same tensor share one input quantizer
    for name in names:
        lin = modules[name]
        outq = StaticQuantizer(dt, sym, obs) if out_re and out_re.search(name) else None
        parent, _, leaf = name.rpartition(".")
        group = next((f"{parent}.{g}" for g in SHARED_INPUTS if leaf in g), None)
        inq = shared.setdefault(group, StaticQuantizer(dt, sym, obs)) if group else StaticQuantizer(dt, sym, obs)
        _set(model, name, StaticQuantLinear(lin, config.weight_config(), inq, outq))
    prefix = _common_prefix(names)
    lns = []
    if config.layernorm_inputs:
        lns = [n for n, m in modules.items() if isinstance(m, nn.LayerNorm) and n.startswith(prefix)
               and "embeddings" not in n]
        for n in lns:
            _set(model, n, StaticQuantLayerNorm(modules[n], StaticQuantizer(dt, sym, obs)))
    atts = []
    if config.attention:
        register_attention()
        atts = [n for n, m in modules.items() if all(hasattr(m, a) for a in ("query", "key", "value"))]
        if not atts:
            raise ValueError("attention=True but the model has no self-attention with query/key/value projections")
        for n in atts:
            modules[n].static_quantizers = AttentionQuantizers(dt, obs)
        model.set_attn_implementation(ATTENTION_NAME)
    device = next(model.parameters()).device
    for q in static_quantizers(model).values():
        q.to(device)
    setattr(model, STATE_ATTR, StaticState(config, names, lns, atts))
    return model


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    out = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        out.append(level[0])
    return ".".join(out)


def static_quantizers(model: nn.Module) -> dict[str, StaticQuantizer]:
    """Every static activation quantizer of a prepared model, by its module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, StaticQuantizer)}


def _rows(batch) -> int:
    if isinstance(batch, Mapping):
        first = next(iter(batch.values()), None)
    elif isinstance(batch, (tuple, list)):
        first = batch[0] if batch else None
    else:
        first = batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 0


def _run(model: nn.Module, batch) -> None:
    if isinstance(batch, Mapping):
        model(**{k: v for k, v in batch.items() if k not in ("labels", "label")})
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def calibrate_static(model: nn.Module, calibration_batches: Iterable, observer: str | None = None) -> dict:
    """Run the calibration batches (training rows) through a prepared model; set every quantizer's scale from its
    observer (`observer` overrides the config's). Refuses a calibration set with no rows. Returns a summary."""
    state = static_state(model)
    if state is None:
        raise ValueError("calibrate_static needs a prepared model: call prepare_static(model, config) first")
    qs = static_quantizers(model)
    for q in qs.values():
        q.mode, q.observer, q.calibrated = "observe", Observer(observer or q.observer_kind), False
    was_training = model.training
    model.eval()
    rows = 0
    for batch in calibration_batches:
        n = _rows(batch)
        if n:
            _run(model, batch)
            rows += n
    model.train(was_training)
    if rows == 0:
        for q in qs.values():
            q.mode = "off"
        raise EmptyCalibrationError("the calibration set has no rows: pass at least one non-empty batch of "
                                    "training inputs (e.g. 4 batches of 32 sentences) to calibrate_static")
    silent = [n for n, q in qs.items() if q.observer.calls == 0]
    if silent:
        raise ValueError(f"{len(silent)} quantizer(s) saw no values during calibration: {silent[:4]}")
    for q in qs.values():
        q.finish_calibration()
    return {"rows": rows, "quantizers": len(qs), "observer": observer or state.config.observer}


def freeze_scales(model: nn.Module) -> nn.Module:
    """PTQ: the calibrated scales stay as they are (no gradient)."""
    for q in static_quantizers(model).values():
        q.scale.requires_grad_(False)
    return model


def learn_scales(model: nn.Module) -> list[nn.Parameter]:
    """QAT: make every calibrated scale trainable; returns them (give them their own optimizer group)."""
    out = []
    for name, q in static_quantizers(model).items():
        if not q.calibrated:
            raise ValueError(f"quantizer {name} is not calibrated: call calibrate_static first (QAT starts there)")
        q.scale.requires_grad_(True)
        out.append(q.scale)
    return out


def quantize_static_(model: nn.Module, config: StaticInt8Config, calibration_batches: Iterable) -> nn.Module:
    """PTQ-static in one call: prepare, calibrate on `calibration_batches`, freeze the scales."""
    prepare_static(model, config)
    calibrate_static(model, calibration_batches)
    return freeze_scales(model)


__all__ = [
    "ATTENTION_NAME", "AttentionQuantizers", "EmptyCalibrationError", "Observer", "StaticInt8Config",
    "StaticQuantLayerNorm", "StaticQuantLinear", "StaticQuantizer", "calibrate_static", "clipping_demo",
    "fake_quantize_static", "freeze_scales", "learn_scales", "prepare_static", "qparams_for_range",
    "quantize_static_", "register_attention", "static_int8_attention", "static_quantizers", "static_state",
]
