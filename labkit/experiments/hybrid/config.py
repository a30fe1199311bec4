"""What one hybrid run is: the variants (float, PTQ, fine-tune-then-PTQ, QAT; INT8 weight-only or with dynamic
activations, FP8 row-wise, INT8 weight-only on labkit's kernel), the layers they quantize, and every setting
(`HybridConfig.for_profile` for quick and full; the fields with a help text are `bench hybrid`'s flags)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from labkit.env import default_device, get_profile
from labkit.experiments import protocol
from labkit.experiments.protocol import flag, seed_list
from labkit.quant.selection import FEED_FORWARD, LAYER_PRESETS, LayerSelection
from labkit.results.files import device_slug

SHAPE_MODES = ("bf16", "w8", "w8a8", "w8-labkit", "fp8")
"""Modes of the random-weight shape part: bf16; torchao INT8 weight-only / dynamic activations; INT8 weight-only on
labkit's Triton kernel; FP8 row-wise weights and activations (GPUs >= 8.9)."""

MODES = ("w8", "w8a8", "fp8", "w8-labkit")
"""8-bit modes: torchao INT8 weight-only / INT8 weights + dynamic per-token INT8 activations / FP8 row-wise
weights + dynamic activations / INT8 weight-only on labkit's Triton kernel (`labkit.quant.int8_linear`)."""


@dataclass(frozen=True)
class Variant:
    """How one variant is made: quantization method (None/ptq/qat), 8-bit mode (`MODES`), fine-tuned or not,
    and whether it starts from the base-ft model (fine-tuned once, reused) or from another variant's converted
    model (`from_variant`: its weights are reused as they are, nothing is trained again)."""

    name: str
    label: str
    method: str | None = None
    mode: str | None = None
    train: bool = False
    from_ft: bool = False
    from_variant: str | None = None

    @property
    def activations(self) -> str | None:
        return "int8-dynamic" if self.mode == "w8a8" else None

    @property
    def parent(self) -> str | None:
        """The variant whose model this one starts from (None: the untouched float model)."""
        return "base-ft" if self.from_ft else self.from_variant


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("base", "float, untouched"),
    Variant("base-ft", "float, fine-tuned like QAT", train=True),
    Variant("ptq-w8", "PTQ INT8 weight-only", "ptq", "w8"),
    Variant("ptq-w8a8", "PTQ INT8 dynamic activations", "ptq", "w8a8"),
    Variant("ft-ptq-w8", "fine-tune, then PTQ INT8 weight-only", "ptq", "w8", train=True, from_ft=True),
    Variant("ft-ptq-w8a8", "fine-tune, then PTQ INT8 dynamic activations", "ptq", "w8a8", train=True, from_ft=True),
    Variant("qat-w8", "QAT -> INT8 weight-only", "qat", "w8", train=True),
    Variant("qat-w8a8", "QAT -> INT8 dynamic activations", "qat", "w8a8", train=True),
    Variant("ptq-fp8", "PTQ FP8 row-wise (weights + dynamic activations)", "ptq", "fp8"),
    Variant("ft-ptq-fp8", "fine-tune, then PTQ FP8 row-wise", "ptq", "fp8", train=True, from_ft=True),
    Variant("qat-fp8", "QAT (FP8 fake quantization) -> FP8 row-wise", "qat", "fp8", train=True),
    Variant("qat-w8-labkit", "QAT -> INT8 weight-only on labkit's Triton kernel", "qat", "w8-labkit", train=True,
            from_variant="qat-w8"),
)}


def needed_variants(variants) -> list[str]:
    """`variants` with the variants they start from added (ft-ptq-* need base-ft, qat-w8-labkit needs qat-w8),
    in run order."""
    want = set(variants)
    for name in list(want):
        parent = VARIANTS[name].parent
        while parent is not None:
            want.add(parent)
            parent = VARIANTS[parent].parent
    return [v for v in VARIANTS if v in want]


def missing_parents(variants) -> list[tuple[str, str]]:
    """(variant, the variant it starts from) for each variant of `variants` whose parent is not in `variants`."""
    return [(v, VARIANTS[v].parent) for v in variants if VARIANTS[v].parent and VARIANTS[v].parent not in variants]



def attention_backend(device: torch.device | str) -> str:
    """FlashAttention-2 ("fa2") on an NVIDIA GPU; on a CPU PyTorch's SDPA (FA2 has no CPU kernel)."""
    return "fa2" if torch.device(device).type == "cuda" else "sdpa"


# ---------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class HybridConfig(protocol.Settings):
    """Everything one hybrid run depends on. `for_profile` gives the quick and full settings."""

    profile: str = "quick"
    model: str = flag("smollm2-135m", "trained causal LM (embedded name or hub id/folder); 'none' skips this part")
    layers: LayerSelection = flag(FEED_FORWARD, "layers to quantize: 'feed-forward' (gate/up/down, the default), "
                                                "'all-linear' (every Linear in the blocks; the head stays float, it is "
                                                "tied to the embedding on SmolLM2), or a regular expression on module "
                                                "names", parse=lambda text: LAYER_PRESETS.get(text, text))
    device: str | None = None
    dtype: str = "bfloat16"
    variants: tuple[str, ...] = flag(tuple(VARIANTS), "comma-separated subset of the variants (default: by profile; "
                                                      "the full GPU profile runs all of them)", choices=tuple(VARIANTS))
    seq_len: int = flag(1024, "block length for perplexity and fine-tuning")
    eval_blocks: int | None = flag(None, "test blocks for perplexity (default: by profile; full on a GPU: all)")
    eval_batch: int = 8
    train_steps: int = flag(120, "fine-tune steps (base-ft and QAT alike)", name="steps")
    train_batch: int = 4
    lr: float = flag(2e-5, "fine-tune learning rate")
    warmup_frac: float = 0.1
    freeze_embeddings: bool = True    # tied models: the head is frozen with it (same tensor)
    prefill_lengths: tuple[int, ...] = flag((2048, 8192), "comma-separated prefill lengths (trained model)",
                                            name="prefill_lens")
    prefill_warmup: int | None = None  # None: the sweep's defaults by length
    prefill_repeat: int | None = None
    decode_prompt: int = 128
    decode_tokens: int = 64
    decode_repeat: int = 3
    seed: int = 0
    data_dir: str | None = None
    seeds: tuple[int, ...] = flag((0,), "comma-separated seeds for the fine-tuned variants (full: 0,1,2; quick: 0): "
                                        "perplexity as mean +- sd", parse=seed_list)
    speed: bool = True  # False: perplexity, size and checks only (the seeds after the first)
    speed_once: bool = True  # speed of the first variant of each kind only: the others run the same kernels
    w8a8_decode_tokens: int | None = 8  # torchao's eager w8a8 decodes at ~2 tok/s on Hopper: fewer tokens timed
    ppl_path: str = flag("auto", "w8a8 perplexity: through an exact float32 emulation of the INT8 arithmetic, "
                                 "checked against the converted model on one batch ('emulated'), through the converted "
                                 "model ('real'), or 'auto' (emulated on a GPU, where torchao's eager INT8 path is "
                                 "slow; real on a CPU)", choices=("auto", "emulated", "real"))
    allow_beyond_context: bool = flag(False, "let the trained model run past its context length")
    sensitivity: bool = flag(True, "skip the per-layer sensitivity table")
    shape: str = flag("llama-2-7b", "random-weight shape for the speed/memory part (GPU only); 'none' skips it")
    shape_lens: tuple[int, ...] = flag((8192, 32768), "comma-separated prefill lengths for the shape")
    shape_modes: tuple[str, ...] = flag(("bf16", "w8", "w8a8"), "comma-separated: bf16,w8,w8a8,w8-labkit (INT8 on "
                                        "labkit's Triton kernel),fp8 (FP8 row-wise, GPUs >= 8.9)", choices=SHAPE_MODES)
    memory_cap_gb: float = flag(80.0, "cap PyTorch's GPU memory at this many GB (1e9 bytes) for the shape part, so "
                                      "'fits an 80 GB card' is tested directly on a bigger one (0: no cap)", parse=float)

    @classmethod
    def for_profile(cls, profile: str | None = None, device: torch.device | str | None = None,
                    **overrides) -> HybridConfig:
        """quick: a CPU smoke run of every step (2 minutes on 2 idle cores; its numbers only show the mechanics);
        full on a GPU: the real experiment; full on a CPU: a reduced but real run (tens of minutes).
        Both full profiles fine-tune over 3 seeds, so perplexity comparisons carry their spread."""
        profile = profile or get_profile()
        device = torch.device(device) if device is not None else default_device()
        if profile == "quick":
            cfg = cls(variants=("base", "base-ft", "ptq-w8a8", "ft-ptq-w8a8", "qat-w8a8", "ptq-fp8"), seq_len=128,
                      eval_blocks=4,
                      eval_batch=4, train_steps=4, train_batch=2, lr=5e-5, prefill_lengths=(64, 256),
                      prefill_warmup=1, prefill_repeat=1, decode_prompt=16, decode_tokens=4, decode_repeat=1)
        elif profile == "full" and device.type != "cuda":
            cfg = cls(variants=("base", "base-ft", "ptq-w8", "ptq-w8a8", "ft-ptq-w8a8", "qat-w8a8", "ptq-fp8"),
                      seq_len=256,
                      eval_blocks=24, eval_batch=4, train_steps=16, train_batch=2, lr=3e-5, prefill_lengths=(512, 2048),
                      prefill_warmup=1, prefill_repeat=5, decode_prompt=64, decode_tokens=8, decode_repeat=5,
                      seeds=(0, 1, 2))
        elif profile == "full":
            cfg = cls(seeds=(0, 1, 2), decode_repeat=5)
        else:
            raise ValueError(f"unknown profile {profile!r}; use 'quick' or 'full'")
        if device.type != "cuda":  # bf16 matmuls and their backward are emulated, many times slower, on CPUs
            cfg = replace(cfg, dtype="float32")  # without AVX512-BF16 or AMX (most laptops, AMD EPYC): keep fp32
        return replace(cfg, profile=profile, device=str(device), **overrides)

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def device_slug(self) -> str:
        return device_slug(self.device)
