"""Prove which attention kernel ran: profile one forward pass and read the operator and CUDA kernel names."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import torch

from labkit.attention.backends import get, get_backend

# PyTorch operator name -> the kernel family it stands for (exact names: the CPU flash op shares a prefix).
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "cpu-flash",
}
SOFTMAX_OPS = ("aten::softmax", "aten::_softmax")
# What each labkit backend must show (and nothing else among attention kernels).
EXPECTED = {
    "eager": {"eager"},
    "sdpa": {"flash", "cudnn", "efficient", "math", "cpu-flash"},  # the dispatcher's choice, reported
    "fa2": {"flash"},
    "cudnn": {"cudnn"},
    "math": {"math"},
    "flash-attn": {"flash-attn"},
    "triton-fa2": {"triton-fa2"},
}
# labkit's Triton kernels mark their launches with this profiler range (labkit.attention.triton_fa2)
TRITON_FA2_OP = "labkit::triton_fa2_forward"
_KERNEL_PATTERN = re.compile(r"flash|fmha|cudnn|sdpa|attention|softmax", re.IGNORECASE)


class BackendMismatchError(RuntimeError):
    """The profiled forward pass ran other attention kernels than the selected backend promises."""


@dataclass
class BackendEvidence:
    """What a profiled forward pass ran: kernel families with call counts, and matching CUDA kernel names."""

    backend: str
    families: dict[str, int]
    ops: dict[str, int]
    cuda_kernels: list[str] = field(default_factory=list)
    ok: bool = False

    def __str__(self) -> str:
        fams = ", ".join(f"{k} x{v}" for k, v in self.families.items()) or "none"
        lines = [f"backend {self.backend!r}: attention ran as {fams} -> {'OK' if self.ok else 'MISMATCH'}"]
        if self.cuda_kernels:
            lines.append("CUDA kernels: " + "; ".join(k[:100] for k in self.cuda_kernels[:4]))
        return "\n".join(lines)


def _families(op_counts: Counter, kernels: list[str]) -> dict[str, int]:
    fam: Counter = Counter()
    if op_counts.get(TRITON_FA2_OP):
        fam["triton-fa2"] = op_counts[TRITON_FA2_OP]
    for op, family in SDPA_OPS.items():
        if op_counts.get(op):
            fam[family] += op_counts[op]
    # the flash-attn package: its torch op (flash_attn::_flash_attn_forward) or autograd function (FlashAttnFunc)
    flash_attn_pkg = sum(n for op, n in op_counts.items()
                         if "flashattn" in op.lower().replace("_", "") and not op.startswith("aten::"))
    if not flash_attn_pkg and not fam:  # or only its kernel: flash_fwd_kernel outside PyTorch's pytorch_flash
        flash_attn_pkg = sum(1 for k in kernels if "flash_fwd" in k and "pytorch_flash" not in k)
    if flash_attn_pkg:
        fam["flash-attn"] = flash_attn_pkg
    if not fam:
        softmax = op_counts.get("aten::softmax", 0) or op_counts.get("aten::_softmax", 0)
        if softmax:
            fam["eager"] = softmax
    return dict(fam)


@contextlib.contextmanager
def _without_profiler_chatter():
    """Some torch builds log "USDT: ... profiler_start/stop" lines on the C stderr; drop those, keep the rest."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith("USDT:")]
            if kept:
                sys.stderr.write("".join(kept))


def profile_attention(fn, device: torch.device | str) -> tuple[Counter, list[str]]:
    """(operator name counts, attention-like CUDA kernel names) seen while running `fn()` once."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _without_profiler_chatter(), torch.inference_mode(), profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    ops: Counter = Counter()
    kernels: list[str] = []
    for event in prof.events():
        is_kernel = getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA
        if is_kernel:
            if _KERNEL_PATTERN.search(event.name) and event.name not in kernels:
                kernels.append(event.name)
        else:
            ops[event.name] += 1
    return ops, kernels


def verify_backend(model: torch.nn.Module, name: str | None = None, inputs: dict | torch.Tensor | None = None,
                   strict: bool = True) -> BackendEvidence:
    """Run `model(**inputs)` once under torch.profiler and check that backend `name` (default: the model's
    current one) really computed attention. Raises BackendMismatchError when `strict` and it did not.
    `inputs`: a dict of model kwargs or an input_ids tensor (default: 32 random tokens)."""
    name = name or get_backend(model)
    get(name)
    device = next(model.parameters()).device
    if inputs is None:
        inputs = torch.randint(0, model.config.vocab_size, (1, 32), device=device)
    if isinstance(inputs, torch.Tensor):
        inputs = {"input_ids": inputs}
    kwargs = {"use_cache": False, **inputs}
    ops, kernels = profile_attention(lambda: model(**kwargs), device)
    families = _families(ops, kernels)
    expected = EXPECTED[name]
    ok = bool(families) and set(families) <= expected
    evidence = BackendEvidence(
        backend=name, families=families,
        ops={k: v for k, v in ops.items()
             if k in SDPA_OPS or k in SOFTMAX_OPS or "flash_attn" in k or k == TRITON_FA2_OP},
        cuda_kernels=kernels, ok=ok,
    )
    if strict and not ok:
        raise BackendMismatchError(
            f"backend {name!r} should run {sorted(expected)} attention, but the profiled forward ran "
            f"{families or 'no attention kernel'} (model attn_implementation={model.config._attn_implementation!r})."
        )
    return evidence


def compare_backends(model: torch.nn.Module, input_ids: torch.Tensor, backends: list[str]) -> list[dict]:
    """For each backend: select it, prove which kernel ran, and compare the logits with the first backend's.

    Failures (a backend that cannot be selected, or a forced kernel that refuses the inputs) become rows with
    the error, so a notebook can show them. The model is left on the last backend that worked.
    """
    from labkit.attention.backends import set_backend

    rows, reference = [], None
    for name in backends:
        row = dict(backend=name, ran=None, ok=False, max_abs_diff=None, error=None)
        try:
            set_backend(model, name)
            evidence = verify_backend(model, name, input_ids, strict=False)
            with torch.inference_mode():
                logits = model(input_ids=input_ids, use_cache=False).logits.float()
        except Exception as err:  # noqa: BLE001 - reported in the row
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            rows.append(row)
            continue
        reference = logits if reference is None else reference
        row.update(ran=", ".join(f"{k} x{v}" for k, v in evidence.families.items()), ok=evidence.ok,
                   max_abs_diff=(logits - reference).abs().max().item(),
                   cuda_kernel=(evidence.cuda_kernels[0][:80] if evidence.cuda_kernels else None))
        rows.append(row)
    return rows
