"""labkit's Triton FlashAttention-2 on a CPU, through Triton's interpreter (TRITON_INTERPRET=1).

conftest.py imports the kernels with the interpreter on (Triton reads the switch when a kernel is defined).
The interpreter runs the same kernel source as the GPU, one program after another, so small shapes keep this
fast. Each check draws fresh random inputs (the seed is in the failure message) and compares O, dQ, dK, dV with
PyTorch's math attention in float32, by relative error ||x - ref|| / ||ref||.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

pytest.importorskip("triton")

# relative error allowed per dtype: a few units of its rounding (bf16 has 8 mantissa bits, fp16 11)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
MODULE = "labkit.attention.triton_fa2"


@pytest.fixture
def fa2(monkeypatch):
    """labkit.attention.triton_fa2 as conftest imported it, with Triton's interpreter on (see conftest.py)."""
    module = importlib.import_module(MODULE)
    if not module.INTERPRET:
        pytest.skip("Triton's CPU interpreter is off here (a CUDA machine, or triton imported before conftest): "
                    "test_real_shapes_on_gpu covers the kernels")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the backend registry reads it: triton-fa2 runs on the CPU
    return module


def math_attention(q, k, v, causal):
    """The definition, in float32, with k/v heads repeated for grouped-query attention."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    with sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def rel(x, ref):
    return ((x.float() - ref).norm() / ref.norm()).item()


CASES = [  # dtype, causal, seq_len (not multiples of the interpreter's block of 16 too), heads, kv_heads, head_dim
    (torch.float32, True, 37, 4, 2, 16),
    (torch.bfloat16, False, 50, 2, 2, 32),
    (torch.float16, True, 64, 2, 1, 16),
    (torch.bfloat16, True, 29, 2, 2, 64),
    (torch.float16, False, 16, 4, 2, 128),
]


@pytest.mark.parametrize("dtype,causal,n,heads,kv_heads,head_dim", CASES,
                         ids=[f"{str(c[0])[6:]}-{'causal' if c[1] else 'full'}-N{c[2]}-H{c[3]}/{c[4]}-d{c[5]}"
                              for c in CASES])
def test_forward_and_gradients_match_math_attention(fa2, dtype, causal, n, heads, kv_heads, head_dim):
    from labkit.attention.triton_fa2_backend import triton_flash_attention

    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator().manual_seed(seed)
    shapes = ((2, heads, n, head_dim), (2, kv_heads, n, head_dim), (2, kv_heads, n, head_dim))
    q, k, v = (torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes)
    dout = torch.randn(shapes[0], generator=gen).to(dtype)

    out = triton_flash_attention(q, k, v, causal)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = math_attention(qf, kf, vf, causal)
    ref_grads = torch.autograd.grad(ref, (qf, kf, vf), dout.float())

    assert out.dtype == dtype and out.shape == q.shape
    errors = {name: rel(x, r) for name, x, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads))}
    assert all(e <= TOLERANCE[dtype] for e in errors.values()), f"seed {seed}: {errors}"


def test_lse_is_the_base2_log_sum_exp_of_each_score_row(fa2):
    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    _, lse = fa2.flash_attention_forward(q, k, v, causal=True)
    scores = (q @ k.transpose(-2, -1) / 4.0).masked_fill(torch.ones(40, 40, dtype=torch.bool).triu(1), -torch.inf)
    assert torch.allclose(lse, torch.logsumexp(scores, -1) / torch.log(torch.tensor(2.0)), atol=1e-5)


def test_chosen_block_sizes_give_the_same_result(fa2):
    q, k, v = (torch.randn(1, 2, 48, 16) for _ in range(3))
    ref = math_attention(q, k, v, True)
    out, _ = fa2.flash_attention_forward(q, k, v, causal=True, block_q=32, block_k=16)
    assert rel(out, ref) < 1e-5
    with pytest.raises(ValueError, match="block_q=16 must be a multiple of block_k=32"):
        fa2.flash_attention_forward(q, k, v, causal=True, block_q=16, block_k=32)


@pytest.mark.parametrize("change,match", [
    (dict(q=torch.randn(2, 8, 16)), "q must be"),
    (dict(k=torch.randn(1, 3, 16, 16), v=torch.randn(1, 3, 16, 16)), "multiple of key/value heads"),
    (dict(q=torch.randn(1, 4, 16, 48), k=torch.randn(1, 2, 16, 48), v=torch.randn(1, 2, 16, 48)), "head_dim=48"),
    (dict(v=torch.randn(1, 2, 16, 16).to(torch.int32)), "v.dtype"),
    (dict(k=torch.randn(1, 2, 8, 16), v=torch.randn(1, 2, 8, 16)), "must share batch, seq_len"),
])
def test_bad_inputs_are_refused_with_the_argument_named(fa2, change, match):
    args = dict(q=torch.randn(1, 4, 16, 16), k=torch.randn(1, 2, 16, 16), v=torch.randn(1, 2, 16, 16)) | change
    with pytest.raises(ValueError, match=match):
        fa2.flash_attention_forward(**args)


def test_llama_runs_on_triton_fa2_and_the_profiler_proves_it(fa2):
    from labkit.attention import set_backend, verify_backend
    from labkit.models import build_from_shape

    model = build_from_shape("tiny-llama", dtype=torch.float32, device="cpu")
    ids = torch.randint(0, model.config.vocab_size, (1, 20))
    with torch.inference_mode():
        eager = model(input_ids=ids, use_cache=False).logits
    set_backend(model, "triton-fa2")
    evidence = verify_backend(model, "triton-fa2", ids)
    assert evidence.ok and set(evidence.families) == {"triton-fa2"}
    assert evidence.families["triton-fa2"] == model.config.num_hidden_layers
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(logits, eager, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-side reason")
def test_without_gpu_or_interpreter_the_backend_says_why(monkeypatch):
    from labkit.attention import BackendUnavailableError, check_backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="'triton-fa2' cannot run here: needs an NVIDIA GPU"):
        check_backend("triton-fa2", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("case", [(1, 32, 8, 4096, 128, "bfloat16", True), (2, 8, 8, 1000, 64, "float16", False)])
def test_real_shapes_on_gpu(case):
    from labkit.attention.triton_fa2_bench import check_case

    row = check_case(*case, seed=int.from_bytes(os.urandom(4), "little"))
    assert row["ok"], row
