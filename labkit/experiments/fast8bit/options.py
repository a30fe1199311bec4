"""Command-line options of the fast8bit benchmark and their checks (every one before any work starts)."""

from __future__ import annotations

import argparse

import torch

from labkit.experiments.fast8bit.common import BLOCK_VARIANTS, DECODE_VARIANTS, DEFAULT_PREFILL, PARTS, \
    PREFILL_VARIANTS

EXPERIMENT = "fast8bit"
# what the profile decides when the option is not given (full: the committed reference's settings)
PROFILE_DEFAULTS = {
    "full": {"ms": "1,16,128,2048,8192", "decode_repeat": 5, "prefill_len": 8192},
    "quick": {"ms": "1,16,128", "decode_repeat": 2, "prefill_len": 1024},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's own options (`python -m labkit.bench fast8bit` adds --profile, --out, --resume and
    --update-reference)."""
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--ms", default=None, help="token counts M for the block part (full: 1,16,128,2048,8192)")
    parser.add_argument("--block-variants", default=",".join(BLOCK_VARIANTS))
    parser.add_argument("--shape", default="llama-2-7b", help="random-weight model shape for decode/prefill")
    parser.add_argument("--prompt", type=int, default=128, help="decode: prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=136, help="decode: new tokens per run")
    parser.add_argument("--decode-repeat", type=int, default=None, help="decode: timed runs per variant (full: 5)")
    parser.add_argument("--decode-variants", default=",".join(DECODE_VARIANTS),
                        help="comma-separated: bf16, labkit-int8-ff, torchao-int8-wo-ff")
    parser.add_argument("--prefill-len", type=int, default=None, help="prefill tokens (full: 8192)")
    parser.add_argument("--prefill-variants", default=",".join(DEFAULT_PREFILL),
                        help=f"comma-separated subset of {','.join(PREFILL_VARIANTS)}")
    parser.add_argument("--no-eager", action="store_true", help="decode/prefill: compiled only")
    parser.add_argument("--no-sweep", action="store_true", help="kernel: skip the launch-configuration sweep")
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)  # the old flag: refused


def gpu_unavailable_reason() -> str | None:
    """Why the benchmark cannot run here (None: a CUDA GPU is visible)."""
    if torch.cuda.is_available():
        return None
    return ("fast8bit measures GPU kernels and needs an NVIDIA GPU; on a CPU read the committed "
            "data/reference/fast8bit_*.json instead (notebook 03b shows it)")


def _check_args(args, profile: str = "full") -> None:
    """Values of the benchmark's own options (ValueError naming the option, the value and the fix); fills the
    profile's defaults in."""
    for name, value in PROFILE_DEFAULTS[profile].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if getattr(args, "reference", False):
        raise ValueError("--reference: a benchmark no longer writes the committed reference directly; run "
                         "`python -m labkit.bench fast8bit --profile full --update-reference` (a complete run is "
                         "copied to data/reference/ at the end)")
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ValueError(f"--parts {args.parts!r}: unknown part(s) {bad}; choose from {','.join(PARTS)}")
    for flag, value, allowed in (("--block-variants", args.block_variants, BLOCK_VARIANTS),
                                 ("--prefill-variants", args.prefill_variants, PREFILL_VARIANTS),
                                 ("--decode-variants", args.decode_variants,
                                  DECODE_VARIANTS + ("torchao-int8-wo-ff",))):
        bad = [v for v in value.split(",") if v and v not in allowed]
        if bad or not [v for v in value.split(",") if v]:
            raise ValueError(f"{flag} {value!r}: unknown variant(s) {bad}; choose from {','.join(allowed)}")
    try:
        ms = [int(m) for m in args.ms.split(",") if m]
    except ValueError:
        raise ValueError(f"--ms {args.ms!r}: give comma-separated positive integers, e.g. 1,16,128") from None
    if not ms or min(ms) < 1:
        raise ValueError(f"--ms {args.ms!r}: give comma-separated positive integers, e.g. 1,16,128")
    for flag, value in (("--prompt", args.prompt), ("--new-tokens", args.new_tokens),
                        ("--decode-repeat", args.decode_repeat), ("--prefill-len", args.prefill_len)):
        if value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if args.new_tokens < 2:
        raise ValueError(f"--new-tokens {args.new_tokens}: must be at least 2 (the first comes from the prefill)")
    if getattr(args, "update_reference", False) and parts != list(PARTS):
        raise ValueError(f"--update-reference with --parts {args.parts}: the committed reference holds every part; "
                         f"leave --parts out (all of {','.join(PARTS)})")


def check(args) -> None:
    """Every argument before any work: the options, a GPU, the run's files. Sets args.profile_name, args.slug and
    args.paths (ValueError on bad input: a usage error, exit 2)."""
    from labkit.env import get_profile
    from labkit.results.files import device_slug
    from labkit.results.run import RunSetupError, check_run_options

    profile = getattr(args, "profile", None) or get_profile()
    _check_args(args, profile)
    if why := gpu_unavailable_reason():
        raise ValueError(why)
    args.slug = device_slug()
    try:
        check_run_options(args, EXPERIMENT, args.slug, profile)
    except RunSetupError as err:
        raise ValueError(str(err)) from None
    args.profile_name = profile
