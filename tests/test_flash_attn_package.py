"""The flash-attn package as a backend: a partial build's refusals (CPU, faked), and on a GPU with the package its
numerics against a float32 forward and backward, the padded-batch (unpad/varlen) path, and the proof that it ran."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from labkit.attention import BackendUnavailableError, check_backend, set_backend, verify_backend
from labkit.attention.backends import flash_attn_build_reason
from labkit.models import build_from_shape

HAS_PACKAGE = importlib.util.find_spec("flash_attn") is not None
needs_package_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_PACKAGE),
                                       reason="needs an NVIDIA GPU and the flash-attn package")


@pytest.fixture
def fake_partial_build(monkeypatch):
    """A flash_attn module as tools/build_flash_attn.sh leaves it with FA_HEAD_DIMS=64,128 FA_DTYPES=bf16."""
    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.LABKIT_BUILD = {"head_dims": [64, 128], "dtypes": ["bf16"]}
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return module


def test_a_partial_build_refuses_head_dims_and_dtypes_it_lacks(fake_partial_build):
    assert flash_attn_build_reason(torch.bfloat16, 128) is None
    assert flash_attn_build_reason(torch.bfloat16, 96) is None  # runs on the 128 kernels, as flash-attn does
    too_big = flash_attn_build_reason(torch.bfloat16, 256)
    assert "256" in too_big and "FA_HEAD_DIMS=256" in too_big
    fp16 = flash_attn_build_reason(torch.float16, 64)
    assert "fp16" in fp16 and "FA_DTYPES" in fp16


def test_a_full_build_refuses_nothing(fake_partial_build):
    del fake_partial_build.LABKIT_BUILD
    assert flash_attn_build_reason(torch.float16, 256) is None


def _reference(q, k, v, causal):
    """Attention in float32 on upcast inputs, [B, H, N, d] (GQA: key/value heads repeated)."""
    rep = q.shape[1] // k.shape[1]
    k32, v32 = (t.float().repeat_interleave(rep, dim=1) for t in (k, v))
    return F.scaled_dot_product_attention(q.float(), k32, v32, is_causal=causal)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


CASES = [  # (batch, heads, kv_heads, seq_len, head_dim, causal)
    (1, 8, 8, 1024, 128, True), (2, 8, 8, 1000, 128, False), (1, 32, 8, 512, 128, True),
    (2, 8, 8, 777, 64, True), (1, 8, 1, 256, 64, False), (2, 4, 4, 1, 128, True),
]


@needs_package_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}h{}kv{}n{}d{}{}".format(*c[:5], "c" if c[5] else ""))
def test_flash_attn_forward_and_gradients_match_float32_as_well_as_pytorch_fa2(case):
    from flash_attn import flash_attn_func
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, hkv, n, d, causal = case
    gen = torch.Generator(device="cuda").manual_seed(sum(case[:5]))
    q = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    k, v = (torch.randn(b, hkv, n, d, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
            for _ in range(2))
    grad = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    ref = _reference(q, k, v, causal)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad.float())
    out = flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), causal=causal).transpose(1, 2)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    rep = h // hkv
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # PyTorch's own FA2, the yardstick (GQA repeated by hand)
        kr, vr = (t.repeat_interleave(rep, dim=1) for t in (k, v))
        torch_out = F.scaled_dot_product_attention(q, kr, vr, is_causal=causal)
    torch_grads = torch.autograd.grad(torch_out, (q, k, v), grad)
    for name, mine, theirs, truth in zip(("out", "dq", "dk", "dv"), (out, *grads), (torch_out, *torch_grads),
                                         (ref, *ref_grads)):
        assert mine.isfinite().all(), name
        limit = 1.5 * _rel(theirs, truth) + 1e-3
        assert _rel(mine, truth) <= limit, f"{name}: {_rel(mine, truth):.2e} vs PyTorch FA2 {_rel(theirs, truth):.2e}"


@needs_package_gpu
@pytest.mark.gpu
def test_an_unbuilt_head_dim_is_refused_with_the_fix():
    import flash_attn

    build = getattr(flash_attn, "LABKIT_BUILD", None)
    if not build or max(build["head_dims"]) >= 256:
        pytest.skip("a full flash-attn build has every head dim")
    q = torch.randn(1, 64, 2, 256, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="FA_HEAD_DIMS"):
        flash_attn.flash_attn_func(q, q, q)
    with pytest.raises(BackendUnavailableError, match="FA_HEAD_DIMS"):
        check_backend("flash-attn", "cuda", torch.bfloat16, head_dim=256)


@needs_package_gpu
@pytest.mark.gpu
def test_flash_attention_2_runs_its_kernel_and_a_padded_batch_through_varlen():
    """transformers' flash_attention_2 unpads a padded batch and runs the varlen kernel: each padded row's logits
    equal that sequence's own unpadded logits (SDPA's flash backend refuses the mask: test_attention_backends)."""
    torch.manual_seed(0)
    model = build_from_shape("tiny-llama", dtype=torch.bfloat16, device="cuda")
    set_backend(model, "flash-attn")
    assert verify_backend(model, "flash-attn").families.keys() == {"flash-attn"}
    lengths = (48, 20)
    ids = torch.randint(0, model.config.vocab_size, (2, max(lengths)), device="cuda")
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, max(lengths) - n:] = 1  # left padding, as for generation
    with torch.inference_mode():
        padded = model(ids, attention_mask=mask, use_cache=False).logits
        for row, n in enumerate(lengths):
            alone = model(ids[row:row + 1, max(lengths) - n:], use_cache=False).logits[0]
            assert _rel(padded[row, max(lengths) - n:], alone) < 2e-2, row
