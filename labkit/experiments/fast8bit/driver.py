"""Runs the chosen parts into a run folder (labkit.results.run), appending each measurement as it is made;
`--resume` skips what the run's JSONL already holds. `main` is `python -m labkit.experiments.fast8bit`."""

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
from labkit.experiments.fast8bit.options import EXPERIMENT, add_arguments, check
from labkit.experiments.fast8bit.targets import evaluate_targets
from labkit.results.files import command_line
from labkit.results.run import Run, publish

NOTES = [
    "timings: p10/p50/p90 over `repeats` calls after warm-up; ms unless named tok_s",
    "kernel part: weights rotate over several copies (> L2) so each call reads HBM; *_graph timings "
    "replay the calls from one CUDA graph (no launch gaps)",
    "compiled block: torch.compile(mode='reduce-overhead') (CUDA graphs); compiled prefill: each "
    "decoder layer compiled (regional compilation); compiled decode: the decode step compiled with "
    "mode='reduce-overhead', fullgraph=True",
    "compile_s: first call's wall time minus one steady-state call (run time: the p10/p50/p90 timings)",
    "decode attention: SDPA (a static KV cache needs a mask, which the flash kernel does not take); "
    "prefill attention: FA2 (SDPA forced to the flash kernel)",
    "llama-2-7b: random weights, speed and memory only",
    "`attempt` on a row: the attempt of the run that measured it (a run continued with --resume has several)",
]


class Recorder:
    """`record(row)`: append one finished measurement (JSONL, flushed) and rewrite the summary with the targets
    judged again; `record.done(**match)`: the row an earlier attempt recorded for that measurement, or None (a key
    given as None matches rows without it)."""

    def __init__(self, run: Run, attempt: int):
        self.run, self.attempt, self.started = run, attempt, time.perf_counter()
        self.previous = [r for part in ("kernel", "block", "decode", "prefill") for r in run.recorded(part)]

    def done(self, **match) -> dict | None:
        for row in self.previous:
            if all(row.get(k) == v for k, v in match.items()):
                return row
        return None

    def __call__(self, row: dict, quiet: bool = False) -> None:
        row = {"t_s": round(time.perf_counter() - self.started, 1), "attempt": self.attempt, **row}
        result = self.run.result
        result["rows"].append(row)
        result["targets"] = evaluate_targets(result["rows"])
        result["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.run.record(row["part"], row)
        if not quiet:
            print(_summary(row), flush=True)


def run(args) -> dict:
    """Run the chosen parts into the run's files; returns the result (its `status`: complete, failed or
    interrupted). A part that could not run at all fails the run; failures and out-of-memory inside a part are
    data points."""
    from labkit.env import provenance

    if not hasattr(args, "paths"):
        check(args)
    parts = [p for p in args.parts.split(",") if p]
    command = getattr(args, "command", None) or command_line(getattr(args, "argv", None))
    config = {k: v for k, v in vars(args).items()
              if k not in ("argv", "paths", "command", "reference", "slug") and not callable(v)}
    result = {"experiment": EXPERIMENT, "provenance": provenance(command, args.profile_name), "config": config,
              "rows": [], "targets": [], "errors": [], "notes": NOTES}
    run_ = Run(result, *args.paths, resume=args.resume)
    attempt = 1 + max((r.get("attempt", 1) for r in run_.previous), default=0)
    record = Recorder(run_, attempt)
    result["rows"] = list(record.previous)
    if args.resume:
        print(f"[fast8bit] resume: {len(record.previous)} measurements already in {run_.jsonl_path}", flush=True)
    print(f"[fast8bit] parts {parts} on {_device_name()}; writing {run_.json_path}", flush=True)
    ms = [int(m) for m in args.ms.split(",") if m]
    jobs = {"kernel": lambda: kernel_part(record, sweep=not args.no_sweep),
            "block": lambda: block_part(record, ms, [v for v in args.block_variants.split(",") if v]),
            "decode": lambda: decode_part(record, args, [v for v in args.decode_variants.split(",") if v]),
            "prefill": lambda: prefill_part(record, args, [v for v in args.prefill_variants.split(",") if v])}
    with run_:
        for part in parts:
            try:
                jobs[part]()
            except Exception as err:  # noqa: BLE001 - the file keeps what was measured; the run fails
                result["errors"].append({"part": part, "error": _error(err),
                                         "traceback": traceback.format_exc(limit=8)})
                run_.fail(f"part {part}: {_error(err)}")
                print(f"[fast8bit] part {part} FAILED: {_error(err)}", flush=True)
            _free()
        result["targets"] = evaluate_targets(result["rows"])
    print("[fast8bit] targets:")
    for t in result["targets"]:
        mark = {True: "MET   ", False: "MISSED", None: "n/a   "}.get(t["met"], str(t["met"]))
        print(f"  {mark} {t['target']}: {t['measured']}", flush=True)
    publish(run_, args, EXPERIMENT, args.slug)
    return result


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


def _summary(row: dict) -> str:
    part = row.get("part")
    if not row.get("ok", True):
        return f"  {part} {row.get('variant', row.get('kind'))} m={row.get('m', '')} " \
               f"{'compiled' if row.get('compiled') else ''} FAILED/SKIPPED: {row.get('error') or row.get('skipped')}"
    try:
        if part == "kernel" and row.get("kind") == "kernel":
            return (f"  kernel {row['k']}->{row['n']} M={row['m']}: labkit {row['labkit_graph']['p50_ms'] * 1e3:.1f} "
                    f"us ({row['labkit_tb_s']:.2f} TB/s, {row['labkit_frac_of_copy']:.0%} of copy) vs bf16 "
                    f"{row['bf16_graph']['p50_ms'] * 1e3:.1f} us; eager {row['labkit_eager']['p50_ms'] * 1e3:.1f} vs "
                    f"{row['bf16_eager']['p50_ms'] * 1e3:.1f} us; err {row['rel_err']:.1e} cfg {row['config']}")
        if part == "kernel":
            return f"  kernel {row.get('kind')}: " + ", ".join(f"{k}={v}" for k, v in row.items()
                                                              if k in ("n", "k", "m", "config", "p50_ms", "tb_s"))
        if part == "block":
            return (f"  block {row['variant']:<16} {'compiled' if row['compiled'] else 'eager   '} M={row['m']:<5} "
                    f"p50 {row['p50_ms']:.3f} ms (p10 {row['p10_ms']:.3f} p90 {row['p90_ms']:.3f}, "
                    f"n={row['repeats']}) err {row['rel_err_vs_bf16']:.1e} first {row['first_call_s']:.1f}s "
                    f"kernels: {row['kernel_note']}")
        if part == "decode":
            return (f"  decode {row['variant']:<16} {'compiled' if row['compiled'] else 'eager'}: "
                    f"{row['p50_tok_s']:.1f} tok/s (p10 {row['p10_tok_s']:.1f} p90 {row['p90_tok_s']:.1f}) "
                    f"compile {row.get('compile_s', 0):.0f}s weights {row['weight_gib']:.2f} GiB; {row['kernel_note']}")
        if part == "prefill":
            return (f"  prefill {row['variant']:<16} {'compiled' if row['compiled'] else 'eager'} {row['seq_len']}: "
                    f"{row['p50_ms']:.1f} ms (p10 {row['p10_ms']:.1f} p90 {row['p90_ms']:.1f}, n={row['repeats']}) "
                    f"compile {row.get('compile_s', 0):.0f}s {row.get('kernel_note', '')}")
    except (KeyError, TypeError):
        pass
    return f"  {row}"


def main(argv: list[str] | None = None) -> int:
    """`python -m labkit.experiments.fast8bit [options]` (the same run as `python -m labkit.bench fast8bit`), or
    `--merge FILE... --out FILE`: several result files joined into one (no GPU needed)."""
    from labkit.results.run import EXIT_CODES, RUNS_DIR

    package_doc = sys.modules[__package__].__doc__  # the package's docstring describes the benchmark
    parser = argparse.ArgumentParser(prog="python -m labkit.experiments.fast8bit",
                                     description=package_doc.splitlines()[0])
    parser.add_argument("--profile", choices=("quick", "full"), default=None)
    parser.add_argument("--out", default=None, help="result file or folder (default: runs/fast8bit_<gpu>_<time>/)")
    parser.add_argument("--resume", action="store_true", help="continue the run of --out, skipping what it measured")
    parser.add_argument("--update-reference", action="store_true",
                        help="copy a complete full-profile run to data/reference/fast8bit_<gpu>.json at the end")
    add_arguments(parser)
    parser.add_argument("--merge", nargs="+", default=None, metavar="FILE",
                        help="join result files of several runs into one file (--out, default "
                             "runs/fast8bit_merged.json; never the reference folder)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = "python -m labkit.experiments.fast8bit " + " ".join(shlex.quote(a) for a in argv)
    if args.merge:
        out = Path(args.out) if args.out else RUNS_DIR / "fast8bit_merged.json"
        if (ROOT / "data" / "reference").resolve() in out.resolve().parents or args.reference:
            parser.error(f"--out {out}: merged files never go to the reference folder directly; a complete "
                         "full-profile run is copied there by --update-reference")
        merged = merge_sessions(args.merge, args.command)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(merged, indent=1, default=str) + "\n", encoding="utf-8")
        print(f"wrote {out}: {len(merged['rows'])} rows from {len(args.merge)} sessions")
        for t in merged["targets"]:
            print(f"  {str(t['met']):<13} {t['target']}: {t['measured']}")
        return 0
    try:
        check(args)
    except ValueError as err:
        parser.error(str(err))
    return EXIT_CODES.get(run(args)["status"], 1)
