"""`python -m labkit.bench kernels`: attention kernels alone, TFLOP/s per backend (labkit.attention.kernels), and
FA2 timed by a plain script beside the harness, so a harness overhead would show. `bench attention` runs it too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from labkit.attention.kernels import KERNEL_BACKENDS, PLAIN_SCRIPT, harness_check, kernel_sweep
from labkit.experiments import protocol
from labkit.experiments.protocol import flag
from labkit.measure.stats import Target, non_monotone

NAME = "kernels"
SHAPES = {  # llama-2-7b's attention: 32 heads of 128, batch 1
    "full": dict(batch=1, heads=32, head_dim=128, seq_lens=[512, 1024, 2048, 4096, 8192, 16384, 32768],
                 check_seq_lens=[4096, 16384]),
    "quick": dict(batch=1, heads=4, head_dim=32, seq_lens=[128, 256, 512], check_seq_lens=[512]),
}
DEFAULT_BACKENDS = ("fa2", "triton-fa2", "sdpa", "cudnn", "flash-attn", "efficient", "eager")


@dataclass
class Settings(protocol.Settings):
    backends: tuple[str, ...] = flag(DEFAULT_BACKENDS, "comma-separated kernel backends (default: all but math)",
                                     choices=KERNEL_BACKENDS)


def kernel_benchmark(profile: str, device: torch.device | str | None = None, backends=DEFAULT_BACKENDS,
                     progress: bool = True, on_row: Callable[[dict], None] | None = None, previous=()) -> dict:
    """The kernel benchmark of a profile: config, rows and the plain-script check (`on_row`, `previous`: as
    `kernel_sweep`)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = dict(SHAPES[profile])
    check, seq_lens = cfg.pop("check_seq_lens"), cfg.pop("seq_lens")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = kernel_sweep(backends, seq_lens, dtype=dtype, device=device, progress=progress, causal=True,
                        on_row=on_row, previous=previous, **cfg)
    plain = harness_check(check, **cfg) if device.type == "cuda" else [
        dict(seq_len=n, harness_tflops=None, plain_tflops=None, ratio=None,
             error="unavailable: the plain-script check times FA2's CUDA kernel and needs an NVIDIA GPU")
        for n in check]
    return {"config": {**cfg, "seq_lens": seq_lens, "causal": True, "dtype": str(dtype).removeprefix("torch."),
                       "flops": "4*B*H*N^2*D, halved for causal"},
            "rows": rows, "plain_script_check": plain, "plain_script": PLAIN_SCRIPT.strip(),
            "non_monotone": non_monotone(rows, y="ms")}


def measure_kernels(settings: Settings, run) -> dict:
    """The kernel benchmark, each row recorded as `kernel` as it finishes; a run that measured none fails."""
    block = kernel_benchmark(settings.profile, backends=settings.backends, previous=run.recorded("kernel"),
                             on_row=lambda row: run.record("kernel", row))
    if not any(r["ok"] for r in block["rows"]):
        run.fail("no kernel was measured: " + "; ".join(sorted({r["error"] or "" for r in block["rows"]}))[:300])
    return block


def measure(settings: Settings, run) -> None:
    block = measure_kernels(settings, run)
    run.result.update(block, config={**run.result["config"], **block["config"]})


def plain_script_target(block: dict) -> Target:
    """"The harness adds no overhead": fa2 through the harness within 10% of a plain script, at every length."""
    target = "kernel benchmark fa2 within 10% of a plain script"
    plain = [c for c in block.get("plain_script_check", []) if c.get("ratio") is not None]
    if not plain:
        return Target.not_measured(target, "no plain-script comparison in the file")
    return Target.exact(target, ", ".join(f"N={c['seq_len']}: {c['harness_tflops']:.0f} against "
                                          f"{c['plain_tflops']:.0f} TFLOP/s" for c in plain),
                        all(abs(1 - c["ratio"]) <= 0.10 for c in plain))


def targets(result: dict) -> list[Target]:
    return [plain_script_target(result)]


__all__ = ["NAME", "Settings", "kernel_benchmark", "measure", "plain_script_target", "targets"]
