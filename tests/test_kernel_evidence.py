"""An INT8 variant must prove it ran an integer matmul: profiler evidence on a tiny model, including a simulated
silent float fallback (what torchao's safe_int_mm does on shapes cuBLAS refuses)."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch import nn

from labkit.quant.kernel_evidence import (
    Int8KernelError,
    classify,
    matmul_evidence,
    require_integer_kernels,
)
from labkit.quant.ptq import quantize_dynamic_int8, quantize_weight_only_int8


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(4, 16, 64)


def test_classify_names():
    found = classify(Counter({"aten::_int_mm": 3, "onednn::qlinear_pointwise.tensor": 2, "aten::addmm": 1,
                              "aten::_weight_int8pack_mm": 1, "aten::add": 5}),
                     Counter({"sm90_xmma_gemm_s8s8_s32": 2, "ampere_bf16_gemm": 1}))
    assert found["integer"] == {"aten::_int_mm": 3, "onednn::qlinear_pointwise.tensor": 2}
    assert found["float"] == {"aten::addmm": 1} and found["int8_weight"] == {"aten::_weight_int8pack_mm": 1}
    assert list(found["cuda_int8_kernels"]) == ["sm90_xmma_gemm_s8s8_s32"]


def test_float_model(tiny, x):
    ev = matmul_evidence(tiny, lambda: tiny(x), "float")
    assert ev.ok and ev.integer_calls == 0 and ev.float


def test_dynamic_int8_runs_integer_matmuls(tiny, x):
    model = quantize_dynamic_int8(copy.deepcopy(tiny))
    ev = require_integer_kernels(matmul_evidence(model, lambda: model(x), "w8a8"))
    assert ev.ok and ev.int8_layers == 3 and ev.integer_calls >= 3, str(ev)


def test_silent_float_fallback_fails_the_check(tiny, x, monkeypatch):
    """torchao's integer matmul replaced by a float one, as safe_int_mm does silently: the outputs barely change,
    the evidence must fail and require_integer_kernels must raise."""
    import torchao.kernel.intmm as intmm

    model = quantize_dynamic_int8(copy.deepcopy(tiny))
    expected = model(x)
    monkeypatch.setattr(intmm, "_int_scaled_matmul_cpu",
                        lambda a, b, scales: (a.float() @ b.float()).to(scales.dtype) * scales)
    assert torch.allclose(model(x), expected, atol=1e-4)  # same numbers: only the profile tells them apart
    ev = matmul_evidence(model, lambda: model(x), "w8a8")
    assert not ev.ok and ev.integer_calls == 0 and "float" in ev.reason, str(ev)
    with pytest.raises(Int8KernelError, match="integer matmul"):
        require_integer_kernels(ev)


def test_weight_only_is_recorded_and_judged_on_request(tiny, x):
    model = quantize_weight_only_int8(copy.deepcopy(tiny))
    ev = matmul_evidence(model, lambda: model(x), "w8")
    assert ev.int8_layers == 3 and ev.as_dict()["float"]  # eager torchao: dequantize, then a float mm
    assert ev.ok == (sum(ev.int8_weight.values()) >= 3 or ev.integer_calls >= 3 or "dequantized" in ev.reason)
    strict = matmul_evidence(model, lambda: model(x), "w8", require_weight_kernel=True)
    assert strict.ok == (sum(strict.int8_weight.values()) + strict.integer_calls >= 3)


def test_bad_mode_and_no_int8_layers(tiny, x):
    with pytest.raises(ValueError, match="mode"):
        matmul_evidence(tiny, lambda: tiny(x), "int4")
    assert not matmul_evidence(tiny, lambda: tiny(x), "w8a8").ok  # claims INT8, has none


def test_hybrid_check_fails_a_w8a8_model_that_multiplies_in_float(monkeypatch):
    """The after-conversion check of notebook 03 / the hybrid benchmark includes the matmul evidence."""
    import torchao.kernel.intmm as intmm

    from labkit.experiments.hybrid import check_hybrid, snapshot_unselected
    from labkit.models import build_from_shape

    model = build_from_shape("tiny-llama", dtype=torch.float32, device="cpu", num_layers=1)
    selected = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
    snap = snapshot_unselected(model, selected)
    quantize_dynamic_int8(model, selected)
    good = check_hybrid(model, selected, snap, "sdpa", quantized=True, mode="w8a8")
    assert good["ok"] and good["matmul_ok"] and good["matmul_evidence"]["integer_calls"] >= 3, good["matmul"]
    monkeypatch.setattr(intmm, "_int_scaled_matmul_cpu",
                        lambda a, b, scales: (a.float() @ b.float()).to(scales.dtype) * scales)
    bad = check_hybrid(model, selected, snap, "sdpa", quantized=True, mode="w8a8")
    assert not bad["ok"] and not bad["matmul_ok"] and "float" in bad["matmul"]


def test_fp8_and_labkit_claims():
    from labkit.quant.kernel_evidence import SHAPE_MODE_CLAIMS, KernelEvidence, judge

    found = classify(Counter({"aten::_scaled_mm": 4, "aten::mm": 1}), Counter({"_int8_weight_only_kernel_0d1": 3}))
    assert found["fp8"] == {"aten::_scaled_mm": 4} and found["int8_weight"] == {"_int8_weight_only_kernel_0d1": 3}
    assert judge(KernelEvidence("fp8", 4, fp8={"aten::_scaled_mm": 4})).ok
    assert not judge(KernelEvidence("fp8", 4, float={"aten::mm": 4})).ok
    assert judge(KernelEvidence("w8", 3, int8_weight={"_int8_weight_only_kernel": 3}), require_weight_kernel=True).ok
    assert set(SHAPE_MODE_CLAIMS) >= {"bf16", "w8", "w8a8", "w8-labkit", "fp8"}
