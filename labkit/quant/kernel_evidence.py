"""Which matmul did an "INT8" model really run? Profiler evidence, so a silent float fallback fails a check.

A model whose Linear weights are torchao INT8 tensors can still multiply in float: torchao's `safe_int_mm` falls
back to a float (or int32) `torch.matmul` on shapes cuBLAS refuses, compiled CPU graphs without freezing lower
`_int_mm` to a float `mm`, and weight-only INT8 dequantizes to float before an ordinary `mm` in eager mode.
`matmul_evidence` profiles one call and sorts the matmul operators that ran into

    integer      int8 x int8 -> int32 kernels: aten::_int_mm, oneDNN qlinear (compiled with freezing on x86),
                 quantized::linear*, and on a GPU CUDA kernels whose names say int8 (imma, s8s8, i8i8 ...)
    int8_weight  int8 weights with float activations in one kernel: aten::_weight_int8pack_mm, labkit's
                 Triton weight-only kernel (a CUDA kernel; its op falls back to dequantize + float matmul above
                 16 rows, e.g. in prefill, by design)
    fp8          aten::_scaled_mm (FP8 tensor cores)
    float        aten::mm / addmm / bmm / matmul / linear (the unquantized layers, and any fallback)

and checks it against what the variant claims: "w8a8" (dynamic INT8 activations) must have run at least one
integer matmul per INT8 layer; "w8" (weight-only) must have run an integer or int8-weight kernel only when
`require_weight_kernel` (eager torchao weight-only dequantizes to float by design, and the evidence says so).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

INTEGER_OPS = re.compile(
    r"^(aten::_int_mm|onednn::qlinear_pointwise.*|quantized::linear.*|quantized_decomposed::.*int_mm.*)$")
INT8_WEIGHT_OPS = re.compile(r"^aten::_weight_int8pack_mm$")
# labkit's custom op dequantizes and calls a float matmul above 16 rows, so only its Triton kernel is evidence
INT8_WEIGHT_CUDA_KERNELS = re.compile(r"_int8_weight_only_kernel")
FP8_OPS = re.compile(r"^aten::_scaled_mm(_v2)?$")
FLOAT_OPS = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear)$")
INT8_CUDA_KERNELS = re.compile(r"s8s8|i8i8|imma|igemm|int8|_int_mm|_s8_|_i8_", re.IGNORECASE)
MODES = ("w8a8", "w8", "fp8", "float")
SHAPE_MODE_CLAIMS = {"bf16": ("float", False), "w8": ("w8", False), "w8a8": ("w8a8", False),
                     "w8-labkit": ("w8", False), "fp8": ("fp8", False)}
"""A benchmark mode -> (the claim matmul_evidence checks, whether an int8-weight kernel is required)."""


class Int8KernelError(RuntimeError):
    """An INT8 variant ran no integer kernel for its INT8 layers (its matmuls fell back to float)."""


@dataclass
class KernelEvidence:
    """What one profiled call ran, and whether that matches the variant's claim (`ok`, `reason`)."""

    mode: str
    int8_layers: int
    integer: dict[str, int] = field(default_factory=dict)
    int8_weight: dict[str, int] = field(default_factory=dict)
    fp8: dict[str, int] = field(default_factory=dict)
    float: dict[str, int] = field(default_factory=dict)
    cuda_int8_kernels: dict[str, int] = field(default_factory=dict)
    ok: bool = False
    reason: str = ""

    @property
    def integer_calls(self) -> int:
        return sum(self.integer.values())

    def as_dict(self) -> dict:
        return asdict(self) | {"integer_calls": self.integer_calls}

    def __str__(self) -> str:
        ran = ", ".join(f"{k} x{v}" for k, v in {**self.integer, **self.int8_weight, **self.fp8,
                                                 **self.float}.items()) or "none"
        return f"{'ok' if self.ok else 'FAILED'} ({self.mode}, {self.int8_layers} INT8 layers): {self.reason}; ran {ran}"


def profile_ops(fn: Callable[[], object]) -> tuple[Counter, Counter]:
    """(operator name -> calls, CUDA kernel name -> calls) of one call of `fn()` under the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    ops, kernels = Counter(), Counter()
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            kernels[ev.name] += 1
        else:
            ops[ev.name] += 1
    return ops, kernels


def classify(ops: Counter, kernels: Counter | None = None) -> dict[str, dict[str, int]]:
    """Matmul operators by kind: integer, int8_weight, float; plus CUDA kernels whose names say int8."""
    out: dict[str, dict[str, int]] = {"integer": {}, "int8_weight": {}, "fp8": {}, "float": {},
                                      "cuda_int8_kernels": {}}
    for name, calls in sorted(ops.items()):
        for kind, pattern in (("integer", INTEGER_OPS), ("int8_weight", INT8_WEIGHT_OPS), ("fp8", FP8_OPS),
                              ("float", FLOAT_OPS)):
            if pattern.match(name):
                out[kind][name] = calls
                break
    for name, calls in sorted((kernels or {}).items()):
        if INT8_WEIGHT_CUDA_KERNELS.search(name):
            out["int8_weight"][name[:160]] = calls
        elif INT8_CUDA_KERNELS.search(name):
            out["cuda_int8_kernels"][name[:160]] = calls
    return out


def judge(evidence: KernelEvidence, require_weight_kernel: bool = False) -> KernelEvidence:
    """Fill `ok` and `reason` from what ran against what the mode claims."""
    e = evidence
    if e.mode == "float":
        e.ok = e.integer_calls == 0 and not e.int8_weight and not e.fp8
        e.reason = "float model, float matmuls" if e.ok else "a float model ran 8-bit kernels"
    elif e.int8_layers == 0:
        e.ok, e.reason = False, f"{e.mode} variant has no 8-bit layers"
    elif e.mode == "fp8":
        calls = sum(e.fp8.values())
        e.ok = calls >= e.int8_layers
        e.reason = (f"{calls} FP8 matmul calls (_scaled_mm) for {e.int8_layers} FP8 layers" if e.ok else
                    f"only {calls} FP8 matmul calls for {e.int8_layers} FP8 layers: the rest ran in a wider float")
    elif e.mode == "w8a8":
        calls = max(e.integer_calls, sum(e.cuda_int8_kernels.values()))  # ops, or int8 kernels in compiled code
        e.ok = calls >= e.int8_layers
        e.reason = (f"{calls} integer matmul calls for {e.int8_layers} INT8 layers" if e.ok else
                    f"only {calls} integer matmul calls for {e.int8_layers} INT8 layers: the rest ran in float "
                    "(a silent fallback, e.g. safe_int_mm on shapes cuBLAS refuses, or compiled without freezing)")
    else:  # w8
        weight_calls = sum(e.int8_weight.values()) + e.integer_calls
        if weight_calls >= e.int8_layers:
            e.ok, e.reason = True, f"{weight_calls} int8-weight kernel calls for {e.int8_layers} INT8 layers"
        elif require_weight_kernel:
            e.ok, e.reason = False, (f"only {weight_calls} int8-weight kernel calls for {e.int8_layers} INT8 layers: "
                                     "the weights were dequantized to float and multiplied in float")
        else:
            e.ok, e.reason = True, ("weights stored INT8, dequantized to float for the matmul (no int8-weight "
                                    "kernel: memory saving only)")
    return e


def matmul_evidence(model: nn.Module, fn: Callable[[], object], mode: str, *, int8_layers: int | None = None,
                    require_weight_kernel: bool = False) -> KernelEvidence:
    """Profile one call of `fn()` (which runs `model`) and judge the matmuls against `mode` (w8a8 / w8 / float).

    `int8_layers`: how many 8-bit Linear layers one call runs (default: `quantized_linears(model)`, each called
    once; INT8 embeddings are lookups, not matmuls, and are not counted)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a variant kind; use one of {MODES}")
    if int8_layers is None:
        int8_layers = 0 if mode == "float" else quantized_linears(model)
    ops, kernels = profile_ops(fn)
    found = classify(ops, kernels)
    return judge(KernelEvidence(mode=mode, int8_layers=int8_layers, **found), require_weight_kernel)


def quantized_linears(model: nn.Module) -> int:
    """Linear layers stored in 8 bits: torchao INT8 / FP8 weights on an nn.Linear, or labkit's INT8 modules."""
    from labkit.quant.report import is_int8_weight, is_labkit_int8

    count = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if is_labkit_int8(m):
            count += 1
        elif isinstance(m, nn.Linear) and (is_int8_weight(w) or "Float8" in type(w).__name__
                                           or "Float8" in type(getattr(w, "data", None)).__name__):
            count += 1
    return count


def require_integer_kernels(evidence: KernelEvidence) -> KernelEvidence:
    """Raise Int8KernelError when the evidence fails (for benchmarks: exit non-zero rather than report float as INT8)."""
    if not evidence.ok:
        raise Int8KernelError(str(evidence))
    return evidence


__all__ = [
    "Int8KernelError",
    "KernelEvidence",
    "SHAPE_MODE_CLAIMS",
    "classify",
    "judge",
    "matmul_evidence",
    "profile_ops",
    "quantized_linears",
    "require_integer_kernels",
]
