"""Check and time labkit's Triton FlashAttention-2 against PyTorch's FA2 and cuDNN attention, in one run.

    python -m labkit.bench triton-fa2 [--profile full] [--out runs/<run>/] [--resume] [--update-reference]
    python -m labkit.attention.triton_fa2_bench [the same options]    the same, without the lab's CLI

1. correctness at real shapes: O, dQ, dK, dV against float32 math attention (relative error ||x - ref|| / ||ref||),
   beside the error of PyTorch's FA2 on the same inputs (the yardstick for the dtype's rounding);
2. kernels: forward and backward TFLOP/s of triton-fa2, fa2 (SDPA flash) and cudnn, batch 1, 32 heads,
   causal, bf16, N = 1k ... 32k, head dims 64 and 128. FLOPs: 4 B H N^2 d for the forward (halved when causal),
   2.5 times that for the backward (the FlashAttention papers' convention);
3. optionally (--prefill) the Llama-2-7B-shape prefill latency with each backend (random weights).

A run writes its own folder runs/triton_fa2_<gpu>_<time>/ (labkit.results.run): result.json, and result.jsonl with
every check and timing appended as it finishes; `--resume --out <run>` measures only what the JSONL lacks;
`--update-reference` copies a complete full-profile run to data/reference/triton_fa2_<gpu>.json. Out-of-memory is
a row. The run ends `failed` (exit 1) when a correctness check fails or nothing could be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from labkit.results.files import command_line, device_slug
from labkit.results.reference import load_reference
from labkit.results.run import Run, RunSetupError, check_run_options, publish

EXPERIMENT = "triton_fa2"

PROFILES = {
    "full": dict(seq_lens=[1024, 2048, 4096, 8192, 16384, 32768], head_dims=[128, 64], heads=32,
                 checks=[  # (batch, heads, kv_heads, N, head_dim, dtype, causal)
                     (1, 32, 32, 4096, 128, "bfloat16", True), (1, 32, 8, 4096, 128, "bfloat16", True),
                     (2, 16, 4, 4000, 64, "float16", False), (1, 8, 8, 4321, 64, "bfloat16", True),
                     (1, 8, 2, 2048, 128, "float16", False)]),
    "quick": dict(seq_lens=[1024, 2048], head_dims=[64], heads=8,
                  checks=[(1, 4, 2, 500, 64, "bfloat16", True), (1, 4, 4, 512, 128, "float16", False)]),
}
BACKENDS = ("triton-fa2", "fa2", "cudnn")
# relative error allowed for O, dQ, dK, dV: the dtype's rounding (a few units of its epsilon, summed over d terms)
TOLERANCE = {"bfloat16": 2e-2, "float16": 5e-3, "float32": 1e-4}


def attention_flops(batch: int, heads: int, n: int, head_dim: int, causal: bool, backward: bool) -> float:
    flops = 4.0 * batch * heads * n * n * head_dim * (0.5 if causal else 1.0)
    return flops * 2.5 if backward else flops


def attention_call(backend: str, q, k, v, causal: bool):
    """A zero-argument call of `backend` on [B, H, N, d] tensors (k, v may have fewer heads)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend == "triton-fa2":
        from labkit.attention.triton_fa2_backend import triton_flash_attention

        return lambda: triton_flash_attention(q, k, v, causal)
    kernel = {"fa2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "math": SDPBackend.MATH}[backend]
    gqa = q.shape[1] != k.shape[1]

    def call():
        with sdpa_kernel([kernel]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    return call


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
    out = attention_call("math", qf, kf, vf, causal)()
    refs["out"] = out.detach()
    refs["dq"], refs["dk"], refs["dv"] = torch.autograd.grad(out, (qf, kf, vf), dout.float())
    del out, qf, kf, vf
    row = dict(batch=batch, heads=heads, kv_heads=kv_heads, seq_len=n, head_dim=head_dim, dtype=dtype_name,
               causal=causal, seed=seed, tolerance=TOLERANCE[dtype_name])
    for backend in ("triton-fa2", "fa2"):
        qb, kb, vb = (t.clone().requires_grad_() for t in (q, k, v))
        try:
            out = attention_call(backend, qb, kb, vb, causal)()
            grads = torch.autograd.grad(out, (qb, kb, vb), dout)
            errs = {name: _rel(x, refs[name]) for name, x in zip(("out", "dq", "dk", "dv"), (out, *grads))}
        except Exception as err:  # noqa: BLE001 - a row
            errs = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
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
        fn = attention_call(backend, q, k, v, causal)
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
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    torch.cuda.empty_cache()
    return row


def prefill_case(model, backend: str, n: int, repeat: int = 3) -> dict:
    """Prefill latency of a causal LM (one forward, no cache, last logits only) with `backend`: median of
    `repeat` CUDA-event timings after one warm-up pass, and the profiler's proof of the kernel that ran."""
    import statistics

    from labkit.attention.backends import set_backend
    from labkit.attention.verify import verify_backend

    row = dict(backend=backend, seq_len=n, ok=False, ms=None, error=None)
    try:
        set_backend(model, backend)
        ids = torch.randint(0, model.config.vocab_size, (1, n), device="cuda")
        evidence = verify_backend(model, backend, ids[:, :256])
        times = []
        with torch.inference_mode():
            for i in range(repeat + 1):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        row.update(ok=True, ms=statistics.median(times[1:]), ran=evidence.families)
    except torch.OutOfMemoryError:
        row.update(error="out of memory")
    except Exception as err:  # noqa: BLE001 - a row
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    torch.cuda.empty_cache()
    return row


def kernel_breakdown(backend: str, n: int, head_dim: int, heads: int, calls: int = 20) -> dict:
    """GPU time per kernel (microseconds per backward, from torch.profiler) against the wall time of one
    backward: where the two differ, the host (Python, autograd, launches) is the bottleneck, not the GPU."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    out = attention_call(backend, q, k, v, True)()
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
    """Lines: per direction, head dim and N, TFLOP/s of each backend and triton-fa2's ratio to fa2 and cudnn."""
    table = {(r["direction"], r["head_dim"], r["seq_len"], r["backend"]): r["tflops"] for r in rows}
    lines = [f"{'dir':<9}{'d':>4}{'N':>7}" + "".join(f"{b:>12}" for b in BACKENDS) + "   vs fa2  vs cudnn"]
    for direction, d, n in sorted({k[:3] for k in table}):
        vals = [table.get((direction, d, n, b)) for b in BACKENDS]
        ratio = [f"{vals[0] / x:8.2f}" if vals[0] and x else "     n/a" for x in vals[1:]]
        lines.append(f"{direction:<9}{d:>4}{n:>7}" + "".join(f"{x:12.1f}" if x else f"{'-':>12}" for x in vals)
                     + " " + " ".join(ratio))
    return lines


def load_committed(gpu: str = "h100") -> dict | None:
    """The committed reference data/reference/triton_fa2_<gpu>.json (a complete full-profile run), or None."""
    data, _ = load_reference(EXPERIMENT, gpu)
    return data


def gpu_unavailable_reason() -> str | None:
    """Why the benchmark cannot run here (None: a CUDA GPU is visible)."""
    if torch.cuda.is_available():
        return None
    return ("this benchmark times CUDA kernels and needs an NVIDIA GPU; the committed H100 figures are in "
            "data/reference/triton_fa2_h100.json (notebook 02b shows them)")


def add_options(p: argparse.ArgumentParser, standalone: bool = True) -> None:
    """The benchmark's options (`python -m labkit.bench triton-fa2` adds --profile, --out, --resume and
    --update-reference itself)."""
    if standalone:
        p.add_argument("--profile", choices=sorted(PROFILES), default=None)
        p.add_argument("--out", default=None, help="result file or folder (default: runs/triton_fa2_<gpu>_<time>/)")
        p.add_argument("--resume", action="store_true", help="continue the run of --out, skipping what it measured")
        p.add_argument("--update-reference", action="store_true",
                       help="copy a complete full-profile run to data/reference/triton_fa2_<gpu>.json at the end")
    p.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)  # the old flag: refused, with the fix
    p.add_argument("--seq-lens", default=None, help="comma-separated N (default: by profile)")
    p.add_argument("--head-dims", default=None, help="comma-separated head dims (default: by profile)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: " + ", ".join(BACKENDS))
    p.add_argument("--no-check", action="store_true", help="skip the correctness checks")
    p.add_argument("--no-backward", action="store_true", help="time the forward only")
    p.add_argument("--prefill", default="", help="comma-separated N for a Llama-2-7B-shape prefill sweep "
                   "(random weights; default: none)")
    p.add_argument("--prefill-layers", type=int, default=None, help="layers of that model (default: all 32)")


def _positive_ints(flag: str, value) -> list[int]:
    if not isinstance(value, str):
        return list(value or [])
    try:
        values = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {value!r}: give comma-separated whole numbers, e.g. 1024,4096") from None
    if any(v < 1 for v in values):
        raise ValueError(f"{flag} {value!r}: every value must be at least 1, e.g. 1024,4096")
    return values


def check(args: argparse.Namespace) -> None:
    """Every argument, before any work (ValueError naming the argument, the value and the fix); sets args.cfg,
    args.profile_name, args.slug and args.paths."""
    from labkit.env import get_profile

    if getattr(args, "reference", False):
        raise ValueError("--reference: a benchmark no longer writes the committed reference directly; run "
                         "`python -m labkit.bench triton-fa2 --profile full --update-reference` (a complete run "
                         "is copied to data/reference/ at the end)")
    seq_lens = _positive_ints("--seq-lens", args.seq_lens)
    head_dims = _positive_ints("--head-dims", args.head_dims)
    args.prefill = _positive_ints("--prefill", args.prefill)
    backends = args.backends.split(",") if isinstance(args.backends, str) else list(args.backends)
    bad = sorted(set(backends) - set(BACKENDS))
    if bad or not backends:
        raise ValueError(f"--backends {args.backends!r}: unknown {bad}; choose from {','.join(BACKENDS)}")
    args.backends = backends
    if args.prefill_layers is not None and args.prefill_layers < 1:
        raise ValueError(f"--prefill-layers {args.prefill_layers}: give at least 1 (or leave it out: all 32)")
    profile = args.profile or get_profile()
    if why := gpu_unavailable_reason():
        raise ValueError(why)
    cfg = dict(PROFILES[profile])
    cfg["seq_lens"], cfg["head_dims"] = seq_lens or cfg["seq_lens"], head_dims or cfg["head_dims"]
    args.slug = device_slug()
    try:
        check_run_options(args, EXPERIMENT, args.slug, profile)
    except RunSetupError as err:
        raise ValueError(str(err)) from None
    args.cfg, args.profile_name = cfg, profile


def run(args: argparse.Namespace) -> dict:
    """Run the checks, the kernel timings and the optional prefill sweep into the run's files; returns the result
    (its `status`: complete, failed or interrupted)."""
    from labkit.env import provenance

    if not hasattr(args, "cfg"):
        check(args)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cfg = args.cfg
    command = getattr(args, "command", None) or command_line(getattr(args, "argv", None))
    result = {"experiment": EXPERIMENT, "provenance": {**provenance(command, args.profile_name),
                                                       "triton": triton_version},
              "config": {**cfg, "backends": args.backends, "dtype": "bfloat16", "batch": 1, "causal": True,
                         "flops": "forward 4*B*H*N^2*d (halved when causal); backward 2.5x the forward",
                         "timing": "triton.testing.do_bench median (L2 flushed between calls), warmup 50 ms, "
                                   "rep 200 ms"},
              "checks": [], "rows": [], "backward_breakdown": [], "prefill": []}
    run_ = Run(result, *args.paths, resume=args.resume)
    print(f"triton-fa2: profile {args.profile_name}; writing {run_.json_path}", flush=True)
    with run_:
        _measure(args, cfg, run_)
        if not any(r.get("ok") for r in result["rows"] + result["checks"] + result["prefill"]):
            run_.fail("nothing was measured: every check and timing failed (see the rows' error)")
    print("\n".join(summary(result["rows"])))
    publish(run_, args, EXPERIMENT, args.slug)
    return result


def _measure(args: argparse.Namespace, cfg: dict, run_: Run) -> None:
    """Each measurement the JSONL lacks, recorded as it finishes (the ones an earlier attempt recorded are reused)."""
    result = run_.result

    def step(kind: str, section: str, key: tuple, fields: tuple, measure) -> dict:
        done = {tuple(r.get(f) for f in fields): r for r in run_.recorded(kind)}
        row = done.get(key)
        if row is None:
            row = measure()
            result[section].append(row)
            run_.record(kind, row)
        else:
            result[section].append(row)
        return row

    if not args.no_check:
        seed = int.from_bytes(os.urandom(4), "little")  # fresh inputs each run; the seed is recorded
        bad = []
        for i, case in enumerate(cfg["checks"]):
            row = step("check", "checks", (i,), ("case",), lambda: {"case": i, **check_case(*case, seed=seed + i)})
            print("check", json.dumps(row), flush=True)
            bad += [] if row["ok"] else [f"correctness check {i} {case}"]
        if bad:
            run_.fail("; ".join(bad) + ": triton-fa2 failed or went beyond the tolerance (see `checks`)")
    for d in cfg["head_dims"]:
        for n in cfg["seq_lens"]:
            for backward in (False,) if args.no_backward else (False, True):
                for backend in args.backends:
                    key = (backend, "backward" if backward else "forward", n, d)
                    row = step("timing", "rows", key, ("backend", "direction", "seq_len", "head_dim"),
                               lambda: time_case(backend, n, d, cfg["heads"], True, backward))
                    print(f"{row['direction']:<9} d={d:<4} N={n:<6} {backend:<11} "
                          f"{row['ms'] or 0:9.3f} ms {row['tflops'] or 0:7.1f} TFLOP/s {row['error'] or ''}",
                          flush=True)
    if not args.no_backward:  # short sequences: is the backward bound by the host or by the GPU?
        for backend in args.backends:
            def breakdown(backend=backend) -> dict:
                try:
                    return kernel_breakdown(backend, min(cfg["seq_lens"]), max(cfg["head_dims"]), cfg["heads"])
                except Exception as err:  # noqa: BLE001 - a row
                    return dict(backend=backend, error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
            print("breakdown", json.dumps(step("breakdown", "backward_breakdown", (backend,), ("backend",),
                                               breakdown)), flush=True)
    model = None
    for n in args.prefill:
        for backend in args.backends:
            def prefill(backend=backend, n=n) -> dict:
                nonlocal model
                if model is None:
                    from labkit.models import build_from_shape

                    model = build_from_shape("llama-2-7b", dtype=torch.bfloat16, device="cuda",
                                             num_layers=args.prefill_layers)
                return prefill_case(model, backend, n)
            print("prefill", json.dumps(step("prefill", "prefill", (backend, n), ("backend", "seq_len"), prefill)),
                  flush=True)


def main(argv=None) -> int:
    """`python -m labkit.attention.triton_fa2_bench [options]`: 0 complete, 1 failed, 2 bad arguments, 130 Ctrl-C."""
    from labkit.results.run import EXIT_CODES

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m labkit.attention.triton_fa2_bench",
                                     description=__doc__.split("\n")[0])
    add_options(parser)
    args = parser.parse_args(argv)
    args.command = "python -m labkit.attention.triton_fa2_bench " + " ".join(argv)
    try:
        check(args)
    except ValueError as err:
        parser.error(str(err))
    return EXIT_CODES.get(run(args)["status"], 1)


if __name__ == "__main__":
    sys.exit(main())
