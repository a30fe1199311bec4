"""Command-line options of the fast8bit benchmark, their checks, and the default result file."""

from __future__ import annotations

import argparse
from pathlib import Path

from labkit.experiments.fast8bit.common import BLOCK_VARIANTS, DECODE_VARIANTS, DEFAULT_PREFILL, PARTS, \
    PREFILL_VARIANTS, ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--ms", default="1,16,128,2048,8192", help="token counts M for the block part")
    parser.add_argument("--block-variants", default=",".join(BLOCK_VARIANTS))
    parser.add_argument("--shape", default="llama-2-7b", help="random-weight model shape for decode/prefill")
    parser.add_argument("--prompt", type=int, default=128, help="decode: prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=136, help="decode: new tokens per run")
    parser.add_argument("--decode-repeat", type=int, default=5, help="decode: timed runs per variant")
    parser.add_argument("--decode-variants", default=",".join(DECODE_VARIANTS),
                        help="comma-separated: bf16, labkit-int8-ff, torchao-int8-wo-ff")
    parser.add_argument("--prefill-len", type=int, default=8192)
    parser.add_argument("--prefill-variants", default=",".join(DEFAULT_PREFILL),
                        help=f"comma-separated subset of {','.join(PREFILL_VARIANTS)}")
    parser.add_argument("--no-eager", action="store_true", help="decode/prefill: compiled only")
    parser.add_argument("--no-sweep", action="store_true", help="kernel: skip the launch-configuration sweep")
    parser.add_argument("--reference", action="store_true",
                        help="write data/reference/fast8bit_<device>.json (default: build/fast8bit_<device>.json)")


def _check_args(args) -> None:
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise SystemExit(f"--parts={args.parts!r}: unknown part(s) {bad}; choose from {','.join(PARTS)}")
    for flag, value, allowed in (("--block-variants", args.block_variants, BLOCK_VARIANTS),
                                 ("--prefill-variants", args.prefill_variants, PREFILL_VARIANTS),
                                 ("--decode-variants", args.decode_variants,
                                  DECODE_VARIANTS + ("torchao-int8-wo-ff",))):
        bad = [v for v in value.split(",") if v and v not in allowed]
        if bad:
            raise SystemExit(f"{flag}={value!r}: unknown variant(s) {bad}; choose from {','.join(allowed)}")
    try:
        ms = [int(m) for m in args.ms.split(",") if m]
    except ValueError:
        raise SystemExit(f"--ms={args.ms!r}: give comma-separated positive integers, e.g. 1,16,128") from None
    if not ms or min(ms) < 1:
        raise SystemExit(f"--ms={args.ms!r}: give comma-separated positive integers, e.g. 1,16,128")
    for flag, value in (("--prompt", args.prompt), ("--new-tokens", args.new_tokens),
                        ("--decode-repeat", args.decode_repeat), ("--prefill-len", args.prefill_len)):
        if value < 1:
            raise SystemExit(f"{flag}={value}: must be at least 1")
    if args.new_tokens < 2:
        raise SystemExit(f"--new-tokens={args.new_tokens}: must be at least 2 (the first comes from the prefill)")


def default_out(reference: bool) -> Path:
    """build/fast8bit_<device>.json, or with `reference` data/reference/fast8bit_<device>.json."""
    from labkit.results.files import device_slug

    folder = ROOT / ("data/reference" if reference else "build")
    return folder / f"fast8bit_{device_slug()}.json"
