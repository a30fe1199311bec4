"""Check and time labkit's Triton FlashAttention-2 against PyTorch's FA2 and cuDNN attention (the kernel's benchmark,
beside the kernel; `python -m labkit.bench triton-fa2` runs it, labkit.experiments.triton_fa2).

    check_case        correctness at real shapes: O, dQ, dK, dV against float32 math attention (relative error
                      ||x - ref|| / ||ref||), beside the error of PyTorch's FA2 on the same inputs (the yardstick
                      for the dtype's rounding)
    time_case         forward or backward TFLOP/s of one backend (triton-fa2, fa2 = SDPA flash, cudnn, flash-attn =
                      the flash-attn package, timed from [B, N, H, D] inputs, its own layout). FLOPs:
                      4 B H N^2 d for the forward (halved when causal), 2.5 times that for the backward
    kernel_breakdown  GPU time per kernel against the wall time of one backward (host-bound or GPU-bound?)
    prefill_case      a causal LM's prefill latency with one backend, and the profiler's proof of the kernel
Out-of-memory and other failures are rows.
"""

from __future__ import annotations

import torch

from labkit.attention.kernels import attention_flops, kernel_callable

BACKENDS = ("triton-fa2", "fa2", "cudnn", "flash-attn")
# relative error allowed for O, dQ, dK, dV: the dtype's rounding (a few units of its epsilon, summed over d terms)
TOLERANCE = {"bfloat16": 2e-2, "float16": 5e-3, "float32": 1e-4}


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x = x.float()
    if not torch.isfinite(x).all():
        return float("nan")
    return ((x - ref).norm() / ref.norm()).item()


def check_case(batch, heads, kv_heads, n, head_dim, dtype_name, causal, seed) -> dict:
    """Forward and gradients of triton-fa2 and fa2 against float32 math attention on fresh random inputs."""
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shapes = ((batch, heads, n, head_dim), (batch, kv_heads, n, head_dim), (batch, kv_heads, n, head_dim))
    q, k, v = (torch.randn(s, generator=gen, device="cuda", dtype=dtype) for s in shapes)
    dout = torch.randn(shapes[0], generator=gen, device="cuda", dtype=dtype)
    refs = {}
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    out = kernel_callable("math", qf, kf, vf, causal)()
    refs["out"] = out.detach()
    refs["dq"], refs["dk"], refs["dv"] = torch.autograd.grad(out, (qf, kf, vf), dout.float())
    del out, qf, kf, vf
    row = dict(batch=batch, heads=heads, kv_heads=kv_heads, seq_len=n, head_dim=head_dim, dtype=dtype_name,
               causal=causal, seed=seed, tolerance=TOLERANCE[dtype_name])
    for backend in ("triton-fa2", "fa2"):
        qb, kb, vb = (t.clone().requires_grad_() for t in (q, k, v))
        try:
            out = kernel_callable(backend, qb, kb, vb, causal)()
            grads = torch.autograd.grad(out, (qb, kb, vb), dout)
            errs = {name: _rel(x, refs[name]) for name, x in zip(("out", "dq", "dk", "dv"), (out, *grads))}
        except Exception as err:  # noqa: BLE001 - a row
            errs = {"error": _error(err)}
        row[backend] = errs
    ours = row["triton-fa2"]
    row["ok"] = "error" not in ours and all(ours[x] <= TOLERANCE[dtype_name] for x in ("out", "dq", "dk", "dv"))
    return row


def time_case(backend, n, head_dim, heads, causal, backward, dtype=torch.bfloat16) -> dict:
    """Median time (triton.testing.do_bench) of one forward, or of one backward through autograd."""
    from triton.testing import do_bench

    row = dict(backend=backend, direction="backward" if backward else "forward", seq_len=n, head_dim=head_dim,
               batch=1, heads=heads, causal=causal, dtype=str(dtype).removeprefix("torch."), ok=False, oom=False,
               ms=None, tflops=None, error=None)
    try:
        q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=dtype, requires_grad=backward)
                   for _ in range(3))
        fn = kernel_callable(backend, q, k, v, causal)
        if backward:
            out = fn()
            dout = torch.randn_like(out)
            call = lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)  # noqa: E731
        else:
            call = fn
        with torch.inference_mode(not backward):
            ms = do_bench(call, warmup=50, rep=200, return_mode="median")
        row.update(ok=True, ms=ms, tflops=attention_flops(1, heads, n, head_dim, causal, backward) / ms / 1e9)
    except torch.OutOfMemoryError:
        row.update(oom=True, error="out of memory")
    except Exception as err:  # noqa: BLE001 - a row
        row["error"] = _error(err)
    torch.cuda.empty_cache()
    return row


def prefill_case(model, backend: str, n: int, repeat: int = 3) -> dict:
    """Prefill latency of a causal LM with `backend` (labkit.measure.prefill: one forward, no cache, last logits
    only; median of `repeat` CUDA-event timings after a warm-up) and the profiler's proof of the kernel that ran."""
    from labkit.attention.backends import set_backend
    from labkit.attention.verify import verify_backend
    from labkit.measure.prefill import prefill_point, random_input_ids

    row = dict(backend=backend, seq_len=n, ok=False, ms=None, error=None)
    try:
        ran = verify_backend(set_backend(model, backend), backend, random_input_ids(model, min(n, 256))).families
        point = prefill_point(model, n, warmup=1, repeat=repeat)
        row.update(ok=point.ok, ms=point.latency_ms, error=point.error, **({"ran": ran} if point.ok else {}))
    except Exception as err:  # noqa: BLE001 - a row
        row["error"] = _error(err)
    torch.cuda.empty_cache()
    return row


def kernel_breakdown(backend: str, n: int, head_dim: int, heads: int, calls: int = 20) -> dict:
    """GPU time per kernel (microseconds per backward, from torch.profiler) against the wall time of one
    backward: where the two differ, the host (Python, autograd, launches) is the bottleneck, not the GPU."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    out = kernel_callable(backend, q, k, v, True)()
    dout = torch.randn_like(out)
    for _ in range(3):
        torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
        end.record()
        torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    for event in prof.events():
        if getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA:
            kernels[event.name[:60]] = kernels.get(event.name[:60], 0.0) + event.device_time / calls
    return dict(backend=backend, seq_len=n, head_dim=head_dim, wall_us=start.elapsed_time(end) * 1e3 / calls,
                gpu_us=sum(kernels.values()), kernels_us=kernels)


def summary(rows: list[dict]) -> list[str]:
    """Lines: per direction, head dim and N, TFLOP/s of each backend and triton-fa2's ratio to each other one."""
    table = {(r["direction"], r["head_dim"], r["seq_len"], r["backend"]): r["tflops"] for r in rows}
    lines = [f"{'dir':<9}{'d':>4}{'N':>7}" + "".join(f"{b:>12}" for b in BACKENDS)
             + " " + " ".join(f"{'vs ' + b:>8}" for b in BACKENDS[1:])]
    for direction, d, n in sorted({k[:3] for k in table}):
        vals = [table.get((direction, d, n, b)) for b in BACKENDS]
        ratio = [f"{vals[0] / x:8.2f}" if vals[0] and x else "     n/a" for x in vals[1:]]
        lines.append(f"{direction:<9}{d:>4}{n:>7}" + "".join(f"{x:12.1f}" if x else f"{'-':>12}" for x in vals)
                     + " " + " ".join(ratio))
    return lines
