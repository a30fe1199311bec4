"""Runs the chosen parts, writing each measurement as it is made; `main` is `python -m labkit.experiments.fast8bit`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch

from labkit.experiments.fast8bit.block import block_part
from labkit.experiments.fast8bit.common import ROOT, _error, _free
from labkit.experiments.fast8bit.end_to_end import decode_part, prefill_part
from labkit.experiments.fast8bit.kernel import kernel_part
from labkit.experiments.fast8bit.merge import merge_sessions
from labkit.experiments.fast8bit.options import _check_args, add_arguments, default_out
from labkit.experiments.fast8bit.targets import evaluate_targets


def run(args) -> dict:
    """Run the chosen parts, writing each measurement as it is made; returns the result."""
    from labkit.env import provenance

    _check_args(args)
    parts = [p for p in args.parts.split(",") if p]
    if not torch.cuda.is_available():
        raise SystemExit("fast8bit measures GPU kernels and needs an NVIDIA GPU; on a CPU read the committed "
                         "data/reference/fast8bit_*.json instead (notebook 03b shows it)")
    out = Path(args.out) if getattr(args, "out", None) else default_out(args.reference)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    jsonl.unlink(missing_ok=True)
    argv = getattr(args, "argv", None)  # set by `python -m labkit.bench fast8bit ...`
    command = ("python -m labkit.bench " + " ".join(shlex.quote(a) for a in argv) if argv is not None else
               "python -m labkit.experiments.fast8bit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    started = time.perf_counter()
    result = {"experiment": "fast8bit", "status": "running", "provenance": provenance(command),
              "config": {k: v for k, v in vars(args).items() if not callable(v) and k != "argv"}, "rows": [], "targets": [],
              "errors": [], "notes": [
                  "timings: p10/p50/p90 over `repeats` calls after warm-up; ms unless named tok_s",
                  "kernel part: weights rotate over several copies (> L2) so each call reads HBM; *_graph timings "
                  "replay the calls from one CUDA graph (no launch gaps)",
                  "compiled block: torch.compile(mode='reduce-overhead') (CUDA graphs); compiled prefill: each "
                  "decoder layer compiled (regional compilation); compiled decode: the decode step compiled with "
                  "mode='reduce-overhead', fullgraph=True",
                  "compile_s: first call's wall time minus one steady-state call",
                  "decode attention: SDPA (a static KV cache needs a mask, which the flash kernel does not take); "
                  "prefill attention: FA2 (SDPA forced to the flash kernel)",
                  "llama-2-7b: random weights, speed and memory only",
              ]}

    def save(status: str = "running") -> None:
        result["status"] = status
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        result["targets"] = evaluate_targets(result["rows"])
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        tmp.replace(out)

    def record(row: dict, quiet: bool = False) -> None:
        row = {"t_s": round(time.perf_counter() - started, 1), **row}
        result["rows"].append(row)
        with jsonl.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        save()
        if not quiet:
            print(_summary(row), flush=True)

    print(f"[fast8bit] parts {parts} on {torch.cuda.get_device_name()}; writing {out}", flush=True)
    save()
    ms = [int(m) for m in args.ms.split(",") if m]
    jobs = {"kernel": lambda: kernel_part(record, sweep=not args.no_sweep),
            "block": lambda: block_part(record, ms, [v for v in args.block_variants.split(",") if v]),
            "decode": lambda: decode_part(record, args, [v for v in args.decode_variants.split(",") if v]),
            "prefill": lambda: prefill_part(record, args, [v for v in args.prefill_variants.split(",") if v])}
    for part in parts:
        try:
            jobs[part]()
        except Exception as err:  # noqa: BLE001 - the file keeps what was measured
            result["errors"].append({"part": part, "error": _error(err), "traceback": traceback.format_exc(limit=8)})
            print(f"[fast8bit] part {part} FAILED: {_error(err)}", flush=True)
        _free()
    save("complete" if not result["errors"] else "incomplete")
    print("[fast8bit] targets:")
    for t in result["targets"]:
        mark = {True: "MET   ", False: "MISSED", None: "n/a   "}.get(t["met"], str(t["met"]))
        print(f"  {mark} {t['target']}: {t['measured']}", flush=True)
    if result["errors"]:
        raise SystemExit(1)
    return result


def _summary(row: dict) -> str:
    part = row.get("part")
    if not row.get("ok", True):
        return f"  {part} {row.get('variant', row.get('kind'))} m={row.get('m', '')} " \
               f"{'compiled' if row.get('compiled') else ''} FAILED/SKIPPED: {row.get('error') or row.get('skipped')}"
    if part == "kernel" and row.get("kind") == "kernel":
        return (f"  kernel {row['k']}->{row['n']} M={row['m']}: labkit {row['labkit_graph']['p50_ms'] * 1e3:.1f} us "
                f"({row['labkit_tb_s']:.2f} TB/s, {row['labkit_frac_of_copy']:.0%} of copy) vs bf16 "
                f"{row['bf16_graph']['p50_ms'] * 1e3:.1f} us; eager {row['labkit_eager']['p50_ms'] * 1e3:.1f} vs "
                f"{row['bf16_eager']['p50_ms'] * 1e3:.1f} us; err {row['rel_err']:.1e} cfg {row['config']}")
    if part == "kernel":
        return f"  kernel {row.get('kind')}: " + ", ".join(f"{k}={v}" for k, v in row.items()
                                                          if k in ("n", "k", "m", "config", "p50_ms", "tb_s"))
    if part == "block":
        return (f"  block {row['variant']:<16} {'compiled' if row['compiled'] else 'eager   '} M={row['m']:<5} "
                f"p50 {row['p50_ms']:.3f} ms (p10 {row['p10_ms']:.3f} p90 {row['p90_ms']:.3f}, n={row['repeats']}) "
                f"err {row['rel_err_vs_bf16']:.1e} first {row['first_call_s']:.1f}s kernels: {row['kernel_note']}")
    if part == "decode":
        return (f"  decode {row['variant']:<16} {'compiled' if row['compiled'] else 'eager'}: "
                f"{row['p50_tok_s']:.1f} tok/s (p10 {row['p10_tok_s']:.1f} p90 {row['p90_tok_s']:.1f}) "
                f"compile {row.get('compile_s', 0):.0f}s weights {row['weight_gib']:.2f} GiB; {row['kernel_note']}")
    if part == "prefill":
        return (f"  prefill {row['variant']:<16} {'compiled' if row['compiled'] else 'eager'} {row['seq_len']}: "
                f"{row['p50_ms']:.1f} ms (p10 {row['p10_ms']:.1f} p90 {row['p90_ms']:.1f}, n={row['repeats']}) "
                f"compile {row.get('compile_s', 0):.0f}s {row.get('kernel_note', '')}")
    return f"  {row}"

def main(argv: list[str] | None = None) -> int:
    package_doc = sys.modules[__package__].__doc__  # the package's docstring describes the benchmark
    parser = argparse.ArgumentParser(prog="python -m labkit.experiments.fast8bit", description=package_doc.splitlines()[0])
    parser.add_argument("--out", default=None, help="result file (default: build/fast8bit_<device>.json)")
    add_arguments(parser)
    parser.add_argument("--merge", nargs="+", default=None, metavar="FILE",
                        help="merge result files of several sessions into one (no GPU needed)")
    args = parser.parse_args(argv)
    if args.merge:
        out = Path(args.out) if args.out else default_out(args.reference).with_name("fast8bit_merged.json")
        if args.reference and not args.out:
            out = ROOT / "data" / "reference" / "fast8bit_h100.json"
        command = "python -m labkit.experiments.fast8bit " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        merged = merge_sessions(args.merge, command)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(merged, indent=1, default=str) + "\n", encoding="utf-8")
        print(f"wrote {out}: {len(merged['rows'])} rows from {len(args.merge)} sessions")
        for t in merged["targets"]:
            print(f"  {str(t['met']):<13} {t['target']}: {t['measured']}")
        return 0
    run(args)
    return 0

