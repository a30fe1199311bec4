"""The attention backend registry on a CPU: availability reasons, clear errors, real switching, no fallback."""

from __future__ import annotations

import pytest
import torch

from labkit import attention
from labkit.attention import (
    BACKENDS,
    BackendFallbackError,
    BackendMismatchError,
    BackendUnavailableError,
    UnknownBackendError,
    backend_status,
    check_backend,
    get_backend,
    set_backend,
    verify_backend,
)
from labkit.attention.backends import Backend, _forced_sdpa_function
from labkit.models import build_from_shape

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-side reasons")


@pytest.fixture(scope="module")
def tiny():
    model = build_from_shape("tiny-llama", dtype=torch.float32, device="cpu")
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    return model, ids


def test_registry_names_the_required_backends():
    assert {"eager", "sdpa", "fa2", "flash-attn", "cudnn"} <= set(BACKENDS)
    assert BACKENDS["fa2"].sdpa_backends == ("FLASH_ATTENTION",)
    assert BACKENDS["cudnn"].sdpa_backends == ("CUDNN_ATTENTION",)
    assert BACKENDS["flash-attn"].hf_name == "flash_attention_2"


@cpu_only
def test_backend_status_on_cpu_gives_reasons():
    status = backend_status()
    assert status["eager"] == status["sdpa"] == "available"
    for name in ("fa2", "cudnn"):
        assert "NVIDIA GPU" in status[name] and "cpu" in status[name]
    assert status["flash-attn"] != "available"
    assert status == attention.backend_status("cpu")


def test_unknown_backend_lists_known_ones():
    with pytest.raises(UnknownBackendError, match="known backends: eager, sdpa, fa2"):
        check_backend("flash3", "cpu")
    with pytest.raises(ValueError):  # UnknownBackendError is a ValueError
        attention.unavailable_reason("nope")


@pytest.mark.parametrize("name", ["fa2", "cudnn", "flash-attn"])
def test_gpu_only_backend_on_cpu_says_why(name):
    with pytest.raises(BackendUnavailableError, match=rf"'{name}' cannot run here: .*(NVIDIA GPU|not installed)"):
        check_backend(name, "cpu")


def test_half_only_backend_rejects_float32(monkeypatch):
    from labkit.attention import backends

    monkeypatch.setitem(backends.BACKENDS, "half-test", Backend("half-test", "", "sdpa", half_only=True))
    assert "bfloat16" in attention.unavailable_reason("half-test", "cpu", torch.float32)
    assert attention.unavailable_reason("half-test", "cpu", torch.bfloat16) is None
    assert attention.unavailable_reason("sdpa", "cpu", torch.float32) is None


def test_set_backend_switches_attention_and_outputs_match(tiny):
    model, ids = tiny
    logits = {}
    for name in ("eager", "sdpa", "math"):
        set_backend(model, name)
        assert get_backend(model) == name
        evidence = verify_backend(model, name, ids)
        assert evidence.ok, evidence
        with torch.inference_mode():
            logits[name] = model(ids, use_cache=False).logits
    assert set(verify_backend(model, "math", ids).families) == {"math"}
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits["eager"], logits["math"], atol=1e-5, rtol=1e-4)


def test_verify_backend_catches_a_mismatch(tiny):
    model, ids = tiny
    set_backend(model, "sdpa")
    with pytest.raises(BackendMismatchError, match="eager"):
        verify_backend(model, "eager", ids)
    assert not verify_backend(model, "eager", ids, strict=False).ok


@cpu_only
def test_set_backend_fa2_on_cpu_raises_before_touching_the_model(tiny):
    model, _ = tiny
    set_backend(model, "sdpa")
    with pytest.raises(BackendUnavailableError, match="NVIDIA GPU"):
        set_backend(model, "fa2")
    assert get_backend(model) == "sdpa"


def test_forced_backend_that_cannot_run_raises_instead_of_falling_back(tiny):
    """The forcing path of fa2/cudnn, exercised on CPU with a kernel the CPU lacks (memory-efficient)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    model, ids = tiny
    forced = Backend("test-efficient", "", "labkit_test_efficient", ("EFFICIENT_ATTENTION",))
    AttentionInterface.register(forced.hf_name, _forced_sdpa_function(forced))
    AttentionMaskInterface.register(forced.hf_name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation(forced.hf_name)
    try:
        with pytest.raises(BackendFallbackError, match="does not fall back"):
            with torch.inference_mode():
                model(ids, use_cache=False)
    finally:
        set_backend(model, "sdpa")


def test_forced_backend_gets_is_causal_and_no_mask_without_padding(tiny, monkeypatch):
    """transformers must hand a forced backend no mask (is_causal=True) when nothing is padded, and a mask
    (which flash refuses, loudly) when there is padding."""
    import torch.nn.functional as F

    model, ids = tiny
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        seen.append((attn_mask is None, is_causal))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    set_backend(model, "math")
    with torch.inference_mode():
        model(ids, use_cache=False)
        assert seen and all(no_mask and causal for no_mask, causal in seen)
        seen.clear()
        mask = torch.ones_like(ids)
        mask[0, :5] = 0
        model(ids, attention_mask=mask, use_cache=False)
    assert seen and all(not no_mask for no_mask, _ in seen)
    set_backend(model, "sdpa")


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@needs_gpu
@pytest.mark.gpu
def test_fa2_runs_flash_kernel_on_gpu():
    model = build_from_shape("tiny-llama", dtype=torch.bfloat16, device="cuda")
    set_backend(model, "fa2")
    evidence = verify_backend(model, "fa2")
    assert evidence.families.keys() == {"flash"}


@needs_gpu
@pytest.mark.gpu
def test_fa2_with_padding_raises_instead_of_falling_back():
    model = build_from_shape("tiny-llama", dtype=torch.bfloat16, device="cuda")
    set_backend(model, "fa2")
    ids = torch.randint(0, model.config.vocab_size, (2, 32), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with pytest.raises(BackendFallbackError, match="mask"), torch.inference_mode():
        model(ids, attention_mask=mask, use_cache=False)


@needs_gpu
@pytest.mark.gpu
def test_every_available_backend_runs_its_kernel_on_gpu():
    from labkit.attention import available_backends, compare_backends

    model = build_from_shape("tiny-llama", dtype=torch.bfloat16, device="cuda")
    ids = torch.randint(0, model.config.vocab_size, (1, 128), device="cuda")
    rows = compare_backends(model, ids, available_backends("cuda"))
    assert all(r["ok"] for r in rows), rows
    assert all(r["max_abs_diff"] < 0.1 for r in rows), rows


def test_compare_backends_reports_kernels_diffs_and_failures(tiny):
    from labkit.attention import compare_backends

    model, ids = tiny
    rows = {r["backend"]: r for r in compare_backends(model, ids, ["eager", "sdpa", "fa2"])}
    assert rows["eager"]["ok"] and rows["eager"]["ran"] == "eager x2" and rows["eager"]["max_abs_diff"] == 0
    assert rows["sdpa"]["ok"] and rows["sdpa"]["max_abs_diff"] < 1e-4
    if not torch.cuda.is_available():
        assert not rows["fa2"]["ok"] and "BackendUnavailableError" in rows["fa2"]["error"]
