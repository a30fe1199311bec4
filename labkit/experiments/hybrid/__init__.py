"""Notebook 03's experiment: attention on FlashAttention-2 in bf16, the chosen Linear layers in 8-bit (torchao).

    HybridConfig.for_profile(profile, device)   the settings (also `bench hybrid`'s flags); VARIANTS, FEED_FORWARD
    make_variant, run_hybrid, measure_speed     build, check and measure one variant or all of them (pipeline)
    check_hybrid, snapshot_unselected           the after-conversion checks (attention kernel, 8-bit == selection,
                                                the rest untouched)
    variant_perplexity                          perplexity by the fastest faithful path (w8a8: an exact emulation)
    shape_benchmark                             the llama-2-7b shape with random weights: speed and memory (GPU)
    targets(result), latency_effect(rows, ...)  the claims, judged; INT8-over-float ratios
    rows_table, prefill_table, checks_table, ppl_paths_table, targets_table   the tables the notebook shows
`python -m labkit.bench hybrid` runs it into a run folder (labkit.experiments.hybrid.bench).
"""

from __future__ import annotations

from labkit.experiments.hybrid.bench import EIGHTY_GB_GIB, latency_effect, shape_benchmark, targets
from labkit.experiments.hybrid.config import SHAPE_MODES, VARIANTS, HybridConfig, Variant, attention_backend
from labkit.experiments.hybrid.evaluate import PerplexityCheckError, variant_perplexity
from labkit.experiments.hybrid.pipeline import (
    HybridResult,
    check_hybrid,
    make_variant,
    measure_speed,
    run_hybrid,
    snapshot_unselected,
)
from labkit.quant.selection import FEED_FORWARD

__all__ = [
    "EIGHTY_GB_GIB", "FEED_FORWARD", "SHAPE_MODES", "VARIANTS", "HybridConfig", "HybridResult", "PerplexityCheckError",
    "Variant", "attention_backend", "check_hybrid", "checks_table", "latency_effect", "make_variant", "measure_speed",
    "ppl_paths_table", "prefill_table", "rows_table", "run_hybrid", "shape_benchmark", "snapshot_unselected",
    "targets", "targets_table", "variant_perplexity",
]


def _kernels(check: dict) -> str:
    """'cpu-flash x30 OK': which attention kernels ran (from the profiled forward), short enough for a column."""
    families = check.get("attention_families") or {}
    ran = ", ".join(f"{k} x{v}" for k, v in families.items()) or (check.get("attention") or "?")[:40]
    return f"{ran} {'OK' if check.get('attention_ok') else 'NOT OK'}"


def _matmuls(check: dict) -> str:
    """'OK: 222 integer calls': whether the matmuls that ran fit the variant, short enough for a column.
    The full matmul evidence of a variant is `checks[variant]["matmul"]`."""
    if "matmul_ok" not in check:
        return "-"
    calls = (check.get("matmul_evidence") or {}).get("integer_calls")
    return f"{'OK' if check['matmul_ok'] else 'NOT OK'}" + (f": {calls} integer calls" if calls is not None else "")


def checks_table(checks: dict[str, dict]):
    """One row per variant: attention kernels that ran, matmul kernel evidence, INT8 == selection, unselected
    layers untouched.
    The full attention evidence of a variant is `checks[variant]["attention"]`."""
    import pandas as pd

    cols = ["attention kernels", "backend", "matmul kernels", "int8_layers", "int8_matches_selection", "unselected_checked",
            "unselected_untouched", "head_still_tied", "fake_quantized_match", "ok"]
    table = pd.DataFrame.from_dict(checks, orient="index")
    table["attention kernels"] = [_kernels(c) for c in checks.values()]
    table["matmul kernels"] = [_matmuls(c) for c in checks.values()]
    return table[[c for c in cols if c in table.columns]]


def rows_table(rows: list[dict], digits: int | None = 2):
    """Result rows as a DataFrame indexed by variant; floats rounded to `digits` for reading (None: as measured)."""
    import pandas as pd

    table = pd.DataFrame(rows).set_index("variant")
    return table if digits is None else table.round(digits)


def ppl_paths_table(rows: list[dict], digits: int | None = 4):
    """How each variant's perplexity was computed, and for a fast path its check against the real model on one
    batch: NLL and mean logit differences (relative), next-token agreement, the tolerance, and both forwards'
    seconds. Empty when no row says (files written before the paths were recorded)."""
    import pandas as pd

    out = []
    for r in rows:
        if "ppl_path" not in r:
            continue
        check = r.get("ppl_check") or {}
        tol = check.get("tolerance") or {}
        out.append({"variant": r["variant"], "ppl_path": r["ppl_path"], "fp8_numerics": r.get("fp8_numerics"),
                    "check_ok": check.get("ok"), "nll_rel_diff": check.get("nll_rel_diff"),
                    "logit_rel_diff": check.get("logit_rel_diff"), "top1_agreement": check.get("top1_agreement"),
                    "tolerance": ", ".join(f"{k} {v:g}" for k, v in tol.items()) or None,
                    "real_s": check.get("real_s"), "fast_s": check.get("fast_s")})
    table = pd.DataFrame(out)
    if table.empty:
        return table
    table = table.set_index("variant").dropna(axis=1, how="all")
    return table if digits is None else table.round(digits)


def prefill_table(rows: list[dict], digits: int | None = 2):
    """Tidy long format: one row per variant x prefill length (latency, peak and activation memory, OOM);
    floats rounded to `digits` (None: as measured)."""
    import pandas as pd

    table = pd.DataFrame([{"variant": r["variant"], "method": r.get("method"), **p}
                          for r in rows for p in r.get("prefill", [])])
    return table if digits is None else table.round(digits)


def targets_table(targets: list[dict]):
    """Targets from `targets` (or a result file's) for display (a pandas Styler): whole sentences, left-aligned, and the
    verdict as judged (met / MISSED / within noise / no verdict / not measured)."""
    import pandas as pd

    table = pd.DataFrame([{"target": t["target"], "measured": t["measured"],
                           "verdict": "MISSED" if t["verdict"] == "missed" else t["verdict"]} for t in targets])
    return (table.style.hide(axis="index")
            .set_properties(**{"text-align": "left", "white-space": "normal"})
            .set_properties(subset=["measured", "verdict"], **{"white-space": "nowrap"})
            .set_table_styles([{"selector": "th", "props": [("text-align", "left")]}]))
