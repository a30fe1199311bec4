"""The attention-only kernel benchmark: FLOP count, rows for every backend, failures as rows."""

from __future__ import annotations

import pytest
import torch

from labkit.attention import kernels
from labkit.attention.kernels import attention_flops, bench_kernel
from labkit.experiments.kernels import kernel_benchmark


def test_flop_count_is_the_standard_one():
    assert attention_flops(1, 32, 4096, 128, causal=False) == 4 * 32 * 4096**2 * 128
    assert attention_flops(2, 32, 4096, 128, causal=True) == 4 * 32 * 4096**2 * 128  # batch 2, halved
    assert attention_flops(1, 32, 4096, 128, causal=False, backward=True) == 2.5 * 4 * 32 * 4096**2 * 128


@pytest.mark.parametrize("backend", ["eager", "sdpa", "math"])
def test_cpu_backends_give_the_same_attention(backend):
    q, k, v = (torch.randn(1, 2, 32, 8) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(kernels.kernel_callable(backend, q, k, v, causal=True)(), ref, atol=1e-5, rtol=1e-4)


def test_rows_for_available_unavailable_and_oom(monkeypatch):
    row = bench_kernel("sdpa", 1, 2, 64, 16, device="cpu", warmup=1, repeat=2)
    assert row["ok"] and row["tflops"] == pytest.approx(row["gflop"] / row["ms"], rel=1e-9)  # GFLOP/ms = TFLOP/s
    if not torch.cuda.is_available():
        fa2 = bench_kernel("fa2", 1, 2, 64, 16, device="cpu")
        assert fa2["skipped"] and "NVIDIA GPU" in fa2["error"]

    def oom(*args, **kwargs):
        def boom():
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return boom

    monkeypatch.setattr(kernels, "kernel_callable", oom)
    row = bench_kernel("eager", 1, 2, 64, 16, device="cpu", warmup=1, repeat=1)
    assert row["oom"] and not row["ok"] and row["tflops"] is None


def test_quick_kernel_benchmark_on_cpu_explains_the_missing_plain_script_check():
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    result = kernel_benchmark("quick", "cpu", backends=["sdpa", "fa2"], progress=False)
    assert {r["backend"] for r in result["rows"]} == {"sdpa", "fa2"}
    assert all(c["ratio"] is None and "NVIDIA GPU" in c["error"] for c in result["plain_script_check"])
    assert "sdpa_kernel([SDPBackend.FLASH_ATTENTION])" in result["plain_script"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.gpu
def test_a_real_gpu_oom_is_a_row_and_memory_comes_back():
    before = torch.cuda.memory_allocated()
    row = bench_kernel("eager", 1, 32, 262144, 128, device="cuda", warmup=1, repeat=1)  # a 128 GiB mask
    assert row["oom"] and not row["ok"]
    assert torch.cuda.memory_allocated() <= before + 2**20
    assert bench_kernel("fa2", 1, 32, 1024, 128, device="cuda", warmup=1, repeat=3)["ok"]
