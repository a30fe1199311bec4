"""Attention kernels alone: TFLOP/s per backend, and the same FA2 kernel timed by a plain script.

FLOPs use the standard count of the FlashAttention papers: 4 * B * H * N^2 * D for Q K^T and P V (two
multiply-adds per element), halved when causal. Inputs are [B, H, N, D] in bfloat16 (float32 on a CPU).
The plain-script comparison runs `PLAIN_SCRIPT` (a dozen lines of torch, no labkit) in a fresh process: if the
harness figure for fa2 is within a few percent of it, the harness adds no overhead.
`python -m labkit.bench kernels` (labkit.experiments.kernels) runs them into a run folder.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable, Iterable

import torch

from labkit.attention.backends import BACKENDS, unavailable_reason
from labkit.measure.memory import error_text, is_memory_error, release_memory
from labkit.measure.timing import time_callable

# kernel-level backends: the model-level names, plus SDPA's memory-efficient kernel for reference
SDPA_FORCED = {"fa2": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
               "math": "MATH"}
KERNEL_BACKENDS = ("eager", "sdpa", "fa2", "triton-fa2", "flash-attn", "cudnn", "efficient", "math")

PLAIN_SCRIPT = '''
import statistics, sys
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, N, D, warmup, repeat = map(int, sys.argv[1:7])
q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
times = []
with torch.inference_mode(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
    for i in range(warmup + repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
ms = statistics.median(times)
print(ms, 4 * B * H * N * N * D / 2 / (ms * 1e-3) / 1e12)
'''


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, causal: bool = True,
                    backward: bool = False) -> float:
    """4 * B * H * N^2 * D, halved for causal attention; the backward 2.5 times the forward (the FlashAttention
    papers' convention)."""
    flops = 4.0 * batch * heads * seq_len * seq_len * head_dim * (0.5 if causal else 1.0)
    return flops * 2.5 if backward else flops


def kernel_unavailable_reason(backend: str, device: torch.device | str, dtype: torch.dtype) -> str | None:
    """Why a kernel-level backend cannot run here (None: it can)."""
    device = torch.device(device)
    if backend in BACKENDS:
        return unavailable_reason(backend, device, dtype)
    if backend == "efficient" and device.type != "cuda":
        return "SDPA's memory-efficient kernel needs CUDA"
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; known: {', '.join(KERNEL_BACKENDS)}")
    return None


def kernel_context(backend: str):
    """The context that forces SDPA to `backend`'s kernel (a no-op context for eager, sdpa and flash-attn)."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_FORCED[backend])]) if backend in SDPA_FORCED else nullcontext()


def kernel_callable(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    causal: bool = True, force: bool = True) -> Callable[[], torch.Tensor]:
    """A zero-argument call running attention on [B, H, N, D] tensors (k, v may have fewer heads) with `backend`.
    With `force`, each call
    enters the forcing context itself; without, the caller holds `kernel_context(backend)` around the calls
    (as the benchmark does, like the plain script, so no per-call Python work is timed)."""
    import torch.nn.functional as F

    if backend == "eager":  # what transformers' eager attention does: scores, + mask, float32 softmax, P V
        n = q.shape[-2]
        mask = torch.zeros(n, n, dtype=q.dtype, device=q.device)
        if causal:
            mask.masked_fill_(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), torch.finfo(q.dtype).min)
        scale = 1 / math.sqrt(q.shape[-1])

        def eager():
            scores = torch.matmul(q, k.transpose(2, 3)) * scale + mask
            return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)

        return eager
    if backend == "flash-attn":
        from flash_attn import flash_attn_func

        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # flash-attn wants [B, N, H, D]
        return lambda: flash_attn_func(qt, kt, vt, causal=causal)
    if backend == "triton-fa2":  # labkit's own Triton kernels (labkit.attention.triton_fa2)
        from labkit.attention.triton_fa2_backend import triton_flash_attention

        return lambda: triton_flash_attention(q, k, v, causal)
    gqa = q.shape[1] != k.shape[1]  # grouped-query attention: fewer key/value heads
    if backend == "sdpa" or not force:
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    def forced():
        with kernel_context(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    return forced


def bench_kernel(backend: str, batch: int, heads: int, seq_len: int, head_dim: int, causal: bool = True,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 warmup: int = 3, repeat: int = 10) -> dict:
    """One kernel measurement: median ms and TFLOP/s; unavailable, OOM and other failures become rows too."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    row = dict(backend=backend, batch=batch, heads=heads, seq_len=seq_len, head_dim=head_dim, causal=causal,
               dtype=str(dtype).removeprefix("torch."), device=str(device), ok=False, oom=False, skipped=False,
               ms=None, tflops=None, error=None,
               gflop=attention_flops(batch, heads, seq_len, head_dim, causal) / 1e9)
    reason = kernel_unavailable_reason(backend, device, dtype)
    if reason is not None:
        row.update(skipped=True, error=f"unavailable: {reason}")
        return row
    failure = None
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(batch, heads, seq_len, head_dim, generator=gen, device=device, dtype=dtype)
                   for _ in range(3))
        with kernel_context(backend):  # forced for the whole timing loop: a fallback raises, nothing extra is timed
            fn = kernel_callable(backend, q, k, v, causal, force=False)
            # L2 evicted before every call: at small N the inputs fit in L2 and back-to-back calls would read them
            # from cache, unlike in a model
            timing = time_callable(fn, device=device, warmup=warmup, repeat=repeat, flush_l2=True)
        row.update(ok=True, ms=timing.median_ms, p10_ms=timing.p10_ms, p90_ms=timing.p90_ms, repeats=timing.repeats,
                   l2_flushed=device.type == "cuda",
                   tflops=row["gflop"] / 1e3 / (timing.median_ms / 1e3))
    except Exception as err:  # noqa: BLE001 - failures are rows
        failure = (is_memory_error(err), error_text(err))
        del err
    if failure is not None:
        row["oom"], row["error"] = failure
        q = k = v = fn = None
        release_memory(device)
    return row


def kernel_sweep(backends: Iterable[str], seq_lens: Iterable[int], batch: int = 1, heads: int = 32,
                 head_dim: int = 128, causal: bool = True, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, progress: bool = True,
                 on_row: Callable[[dict], None] | None = None, previous: Iterable[dict] = ()) -> list[dict]:
    """`bench_kernel` for every backend and length (fewer repeats at long N). Each finished row goes to
    `on_row`; rows in `previous` (an interrupted run's) are reused, not measured again."""
    from tqdm.auto import tqdm

    backends, seq_lens = list(backends), sorted(seq_lens)
    done = {(r["backend"], r["seq_len"]): r for r in previous}
    rows = []
    with tqdm(total=len(backends) * len(seq_lens), desc="kernels", disable=not progress) as bar:
        for backend in backends:
            for n in seq_lens:
                if (backend, n) in done:
                    rows.append(done[(backend, n)])
                else:
                    repeat = 20 if n <= 4096 else 10
                    rows.append(bench_kernel(backend, batch, heads, n, head_dim, causal, dtype, device, 3, repeat))
                    if on_row is not None:
                        on_row(rows[-1])
                bar.update(1)
                bar.set_postfix_str(f"{backend} N={n}")
    return rows


def plain_script_tflops(seq_len: int, batch: int = 1, heads: int = 32, head_dim: int = 128,
                        warmup: int = 3, repeat: int = 20, timeout_s: float = 300) -> dict:
    """Run `PLAIN_SCRIPT` (FA2 through SDPA, causal, bf16, no labkit) in a fresh process; its ms and TFLOP/s."""
    row = dict(seq_len=seq_len, batch=batch, heads=heads, head_dim=head_dim, ok=False, ms=None, tflops=None,
               error=None)
    if not torch.cuda.is_available():
        row["error"] = "unavailable: the plain-script check times FA2's CUDA kernel and needs an NVIDIA GPU"
        return row
    args = [str(x) for x in (batch, heads, seq_len, head_dim, warmup, repeat)]
    try:
        proc = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, *args], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        row["error"] = f"timed out after {timeout_s:.0f} s"
        return row
    try:
        ms, tflops = map(float, proc.stdout.split())
        row.update(ok=True, ms=ms, tflops=tflops)
    except ValueError:
        row["error"] = f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['no output'])[-1][:300]}"
    return row


def harness_check(seq_lens: Iterable[int], batch: int = 1, heads: int = 32, head_dim: int = 128,
                  repeat: int = 20) -> list[dict]:
    """fa2 through the harness against `PLAIN_SCRIPT`, same shapes and repeats: ratio = harness / plain."""
    rows = []
    for n in seq_lens:
        plain = plain_script_tflops(n, batch, heads, head_dim, repeat=repeat)
        harness = bench_kernel("fa2", batch, heads, n, head_dim, True, torch.bfloat16,
                               "cuda" if torch.cuda.is_available() else "cpu", 3, repeat)
        ratio = harness["tflops"] / plain["tflops"] if plain["ok"] and harness["ok"] else None
        rows.append(dict(seq_len=n, batch=batch, heads=heads, head_dim=head_dim,
                         harness_tflops=harness["tflops"], plain_tflops=plain["tflops"], ratio=ratio,
                         error=plain["error"] or harness["error"]))
    return rows
