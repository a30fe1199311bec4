"""Checks of notebook 03b's exercises: a per-channel INT8 quantizer bit for bit against torchao, the memory floor of
one weight-only call, and the INT8 kernel's launch grid (run through the kernel, in Triton's interpreter on a CPU;
skipped where Triton is not installed)."""

from __future__ import annotations

import copy

import torch

from labkit.checks import ClaimFailed
from labkit.exercises import answer_value, call_answer, claim
from labkit.quant import int8_kernel as ik


def check_per_channel_quantizer(my_quantize) -> None:
    """`my_quantize(weight)` -> (codes int8, scale fp32 per row), bit for bit torchao's Int8WeightOnlyConfig(PerRow())
    on a bf16 and a float32 layer."""
    from torchao.quantization import Int8WeightOnlyConfig, PerRow, quantize_

    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        layer = torch.nn.Linear(64, 32, bias=False).to(dtype)
        with torch.no_grad():
            layer.weight[3] *= 40  # one row with far larger weights: its scale must be its own
        reference = copy.deepcopy(layer)
        quantize_(reference, Int8WeightOnlyConfig(granularity=PerRow()))
        out = call_answer(my_quantize, "my_quantize", layer.weight.detach())
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ClaimFailed(f"my_quantize should return (codes, scale); got {type(out).__name__}")
        codes, scale = out
        name = str(dtype).removeprefix("torch.")
        claim(f"codes dtype ({name} layer)", str(codes.dtype), "torch.int8", hint="cast the rounded codes with .to(torch.int8)")
        claim(f"your scales == torchao's ({name} layer)", scale.float().reshape(-1),
              reference.weight.scale.reshape(-1).float(), tol=0.0,
              hint="scale = max |w| of each row / 127.5, computed in the weight's dtype, then stored as float32")
        claim(f"your codes == torchao's, bit for bit ({name} layer)", codes.to(torch.int16),
              reference.weight.qdata.to(torch.int16), tol=0.0,
              hint="codes = round(w * (1 / scale)) clamped to [-128, 127]: multiply by the reciprocal, as torchao "
                   "does (w / scale rounds differently on a few values)")


def check_floor_us(floor_us, reference: dict | None = None) -> None:
    """`floor_us(m, n, k, tb_s)` against `int8_kernel.weight_only_bytes`; then, on the committed H100 file when given,
    no measured call beats the floor and the best comes within 1.5x of it."""
    for m, n, k, tb_s in ((1, 11008, 4096, 3.0), (16, 4096, 11008, 2.5), (7, 256, 4096, 1.0)):
        got = call_answer(floor_us, "floor_us", m, n, k, tb_s)
        want = ik.weight_only_bytes(m, n, k) / (tb_s * 1e12) * 1e6
        claim(f"floor at M={m}, {k}->{n}, {tb_s} TB/s (us)", float(got), want, tol=1e-6 * want,
              hint="bytes = n*k INT8 codes + 4*n for the fp32 scales + 2*m*k bf16 inputs + 2*m*n bf16 outputs; "
                   "microseconds = bytes / (tb_s * 1e12) * 1e6")
    if reference is None:
        return
    copy_tb_s = next(r for r in reference["rows"] if r.get("kind") == "copy-bandwidth")["tb_s"]
    ratios = {f"M={r['m']} {r['k']}->{r['n']}": r["labkit_graph"]["p50_ms"] * 1e3 / floor_us(r["m"], r["n"], r["k"],
                                                                                              copy_tb_s)
              for r in reference["rows"] if r.get("kind") == "kernel"}
    claim("fastest measured call / floor (none may beat it)", round(min(ratios.values()), 3), 1.0, op=">=",
          committed="fast8bit_h100.json", hint="a call faster than the floor means the byte count is too high")
    claim("best measured call / floor", round(min(ratios.values()), 3), 1.5, op="<=", committed="fast8bit_h100.json",
          hint="a floor far below every measurement means bytes are missing from the count")


def check_launch_grid(launch_programs, narrow_config, device: torch.device | str = "cpu") -> None:
    """`launch_programs(cfg, m, n)` against the kernel's grid; `narrow_config` fills an H100 (>= 264 programs,
    BLOCK_N >= 16) for n=256, k=4096, one token, and computes the right product with the kernel."""
    for cfg, m, n in ((ik.KernelConfig(16, 32, 256, 1), 1, 11008), (ik.KernelConfig(16, 64, 128, 2), 20, 4096),
                      (ik.KernelConfig(1, 8, 1024, 1), 1, 4096), (ik.KernelConfig(16, 16, 64, 4), 33, 100)):
        want = ik.launch_grid(cfg, m, n)
        got = call_answer(launch_programs, "launch_programs", cfg, m, n)
        claim(f"programs, M={m}, n={n}, BLOCK_M={cfg.block_m}, BLOCK_N={cfg.block_n}, SPLIT_K={cfg.split_k}",
              int(got), want[0] * want[1] * want[2],
              hint="ceil(n / BLOCK_N) * SPLIT_K * ceil(m / BLOCK_M): round up, a partial tile is a program too")
    cfg = answer_value(narrow_config, "narrow_config")
    if not isinstance(cfg, ik.KernelConfig):
        raise ClaimFailed(f"narrow_config should be an ik.KernelConfig(block_m, block_n, block_k, split_k); got {cfg!r}")
    claim("your narrow config: BLOCK_N", cfg.block_n, 16, op=">=", hint="BLOCK_N below 16 wastes the loads")
    claim("your narrow config: programs for n=256, one token", launch_programs(cfg, 1, 256), 264, op=">=",
          hint="256 channels give only 256 / BLOCK_N tiles: split K to multiply the programs")
    device = torch.device(device)
    if ik.triton is None:  # Triton ships for Linux only: the grid is checked above, the kernel run cannot be
        print(f"SKIP  the kernel with your config vs the float64 reference: {ik.triton_available(device)[1]}")
        return
    gen = torch.Generator().manual_seed(1)
    codes, scale = ik.quantize_per_channel(torch.randn(256, 4096, generator=gen))
    x = torch.randn(1, 4096, generator=gen).to(torch.bfloat16)
    y = ik.int8_weight_only_mm(x.to(device), codes.to(device), scale.to(device), cfg)
    want = ik.reference_mm(x, codes, scale)
    claim("the kernel with your config vs the float64 reference, relative error",
          float((y.cpu().double() - want).norm() / want.norm()), 1e-2, op="<",
          hint="BLOCK_K * SPLIT_K need not divide K, but every block size must be a power of two")


__all__ = ["check_floor_us", "check_launch_grid", "check_per_channel_quantizer"]
