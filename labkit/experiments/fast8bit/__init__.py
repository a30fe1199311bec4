"""Making 8-bit fast on the GPU (notebook 03b): the committed fast8bit result read as tables, and its targets.

    ref = labkit.results.load_reference("fast8bit", "h100")[0]     the committed run (a complete full-profile one)
    block_table(ref), kernel_table(ref), e2e_table(ref)             its block, kernel and end-to-end measurements
    targets(ref)                                                    its targets judged by today's rules
`python -m labkit.bench fast8bit` measures them (labkit.experiments.fast8bit.bench).
"""

from __future__ import annotations

from labkit.experiments.fast8bit.bench import BLOCK_VARIANTS, kernel_check, targets
from labkit.quant.selection import FEED_FORWARD

__all__ = ["BLOCK_VARIANTS", "FEED_FORWARD", "block_table", "e2e_table", "kernel_check", "kernel_table", "targets"]


def block_table(result: dict, value: str = "p50_ms"):
    """Block part as a table: one row per (variant, eager/compiled), one column per M; failures show their reason."""
    import pandas as pd

    rows = []
    for r in result["rows"]:
        if r.get("part") != "block" or "m" not in r:
            continue
        cell = r.get(value) if r.get("ok") else ("OOM" if r.get("oom") else "failed")
        rows.append({"variant": r["variant"], "mode": "compiled" if r["compiled"] else "eager", "M": r["m"],
                     value: cell})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.pivot_table(index=["variant", "mode"], columns="M", values=value, aggfunc="first", sort=False)


def kernel_table(result: dict):
    """Kernel part: labkit's kernel against bf16 cuBLAS per shape and M (device times from CUDA-graph replay)."""
    import pandas as pd

    rows = []
    for r in result["rows"]:
        if r.get("part") == "kernel" and r.get("kind") == "kernel":
            rows.append({"shape (K->N)": f"{r['k']}->{r['n']}", "M": r["m"],
                         "labkit us": r["labkit_graph"]["p50_ms"] * 1e3, "bf16 cuBLAS us": r["bf16_graph"]["p50_ms"] * 1e3,
                         "speed-up": r["speedup_vs_bf16_graph"], "labkit TB/s": r["labkit_tb_s"],
                         "share of copy bandwidth": r["labkit_frac_of_copy"],
                         "labkit us (launched from Python)": r["labkit_eager"]["p50_ms"] * 1e3,
                         "bf16 us (launched from Python)": r["bf16_eager"]["p50_ms"] * 1e3, "rel. error": r["rel_err"]})
    return pd.DataFrame(rows)


def e2e_table(result: dict):
    """Decode and prefill rows of the 7B shape: variant, eager/compiled, p10/p50/p90, compile seconds, kernel check."""
    import pandas as pd

    rows = []
    for r in result["rows"]:
        if r.get("part") not in ("decode", "prefill"):
            continue
        row = {"part": r["part"], "variant": r["variant"], "mode": "compiled" if r.get("compiled") else "eager"}
        if not r.get("ok"):
            row["note"] = r.get("skipped") or r.get("error")
        elif r["part"] == "decode":
            row.update({"p10": r["p10_tok_s"], "p50": r["p50_tok_s"], "p90": r["p90_tok_s"], "unit": "tok/s",
                        "repeats": r["repeats"], "compile s": r.get("compile_s"), "weights GiB": r.get("weight_gib"),
                        "kernel check": r.get("kernel_note")})
        else:
            row.update({"p10": r["p10_ms"], "p50": r["p50_ms"], "p90": r["p90_ms"], "unit": "ms",
                        "repeats": r["repeats"], "compile s": r.get("compile_s"), "weights GiB": r.get("weight_gib"),
                        "kernel check": r.get("kernel_note")})
        rows.append(row)
    return pd.DataFrame(rows)
