"""The hybrid's targets judged from measured rows (met / missed / within noise / no verdict / not measured),
INT8-over-float ratios, and the tables the notebook shows."""

from __future__ import annotations

import pandas as pd

from labkit.measure.stats import format_spread, paired_differences, per_seed, spread, verdict, verdict_text

EIGHTY_GB_GIB = 80e9 / 2**30  # an "80 GB" H100 in GiB


QAT_VARIANTS = ("qat-w8a8", "qat-w8", "qat-fp8", "qat-w8-labkit")
"""The QAT variants judged against the equally fine-tuned float model (and against PTQ of their own mode)."""


def _mode_words(mode: str, row: dict | None) -> str:
    """How a target names a mode: 'w8a8', 'fp8, fake-quantized' (no FP8 kernels ran), 'w8, labkit kernel'."""
    if mode == "w8-labkit":
        return "w8, labkit kernel"
    if mode == "fp8" and row is not None and row.get("fp8_numerics") == "fake":
        return "fp8, fake-quantized"
    return mode


def evaluate_targets(rows: list[dict], shape_rows: list[dict] | None = None, long_len: int = 32768,
                     runs: list[list[dict]] | None = None) -> list[dict]:
    """The lab's hybrid targets, judged from measured rows: each has "verdict" and "met" (True / False / None).

    QAT perplexity (INT8 w8a8 / w8, FP8 row-wise, INT8 w8 on labkit's kernel) within 1% of the float model
    fine-tuned alike (8-bit costs almost nothing) and better than PTQ of the same layers and mode (QAT earns its
    training); on the big shape, INT8 feed-forward weights at most 0.7x
    bf16 and 32k tokens within an 80 GB card (the memory the hybrid buys).
    `runs`: the rows of every seed (default: `rows` alone). Perplexity targets are judged on the per-seed
    differences: met / missed only with >= 3 seeds and a mean farther from the limit than the spread."""
    runs = runs or [rows]
    by = {r["variant"]: r for r in rows if "ppl" in r}
    out: list[dict] = []
    ref = by.get("base-ft")

    def ppl_of(variant: str) -> str:
        values = per_seed(runs, variant, "ppl")
        return format_spread(spread(values), 3) if values else "n/a"

    for qat_name in QAT_VARIANTS:
        mode = qat_name.removeprefix("qat-")
        qat = by.get(qat_name)
        what = _mode_words(mode, qat)
        if qat and ref:
            gaps = [100 * (q / f - 1) for q, f in zip(*_paired(runs, qat_name, "base-ft"))]
            v = verdict(gaps, 1.0, at_least=False)
            out.append({"target": f"QAT ({what}) perplexity within 1% of the equally fine-tuned float model",
                        "measured": f"QAT {ppl_of(qat_name)} vs {ppl_of('base-ft')}; gap per seed "
                                    f"{verdict_text(v)} %", "verdict": v["verdict"], "met": v["met"], "seeds": v["n"],
                        "variant": qat_name})
        for other, label in ((f"ptq-{mode}", f"QAT ({what}) perplexity better than PTQ ({mode}) of the same layers"),
                             (f"ft-ptq-{mode}", f"(stricter) QAT ({what}) better than fine-tune-then-PTQ ({mode})")):
            if qat and by.get(other):
                diffs = paired_differences(runs, other, qat_name, "ppl")  # > 0: QAT is better
                v = verdict(diffs, 0.0, at_least=True)
                out.append({"target": label,
                            "measured": f"QAT {ppl_of(qat_name)} vs {ppl_of(other)}; {other} - QAT per seed "
                                        f"{verdict_text(v, 3)}", "verdict": v["verdict"], "met": v["met"],
                            "seeds": v["n"], "variant": qat_name})
    shape_rows = shape_rows or []
    shape = shape_rows[0]["model"] if shape_rows else ""
    weights = {r["mode"]: r["weight_gib"] for r in shape_rows if r.get("weight_gib") is not None}
    for mode in ("w8", "w8a8"):
        if mode in weights and "bf16" in weights:
            ratio = weights[mode] / weights["bf16"]
            out.append({"target": f"{shape} shape: INT8 feed-forward ({mode}) weight memory <= 0.7x bf16",
                        "measured": f"{weights[mode]:.2f} / {weights['bf16']:.2f} GiB = {ratio:.3f}x (exact: bytes)",
                        "verdict": "met" if ratio <= 0.7 else "missed", "met": ratio <= 0.7})
        long = [r for r in shape_rows if r["mode"] == mode and r.get("kind") == "prefill" and r["seq_len"] == long_len]
        if long:
            r = long[0]
            cap = r.get("memory_cap_gib")
            # capped run: the allocator could not use more than 80 GB, so running at all is the proof; uncapped
            # (older files): judged from the measured peak against 80 GB
            fits = bool(r["ok"]) and r.get("peak_gib") is not None and r["peak_gib"] <= (cap or EIGHTY_GB_GIB)
            how = (f"under a {cap:.1f} GiB cap (80 GB) on this card" if cap else
                   f"uncapped, peak judged against 80 GB = {EIGHTY_GB_GIB:.1f} GiB")
            out.append({"target": f"{shape} shape: INT8 feed-forward ({mode}) + FA2 reaches {long_len} tokens "
                                  "within an 80 GB GPU's memory",
                        "measured": (f"ok, peak {r.get('peak_gib') or float('nan'):.1f} GiB {how}" if r["ok"]
                                     else ("out of memory " + how if r["oom"] else f"failed: {r.get('error')}")),
                        "verdict": "met" if fits else "missed", "met": fits})
    if not out:
        out.append({"target": "(none measured in this run)", "measured": "", "verdict": "not measured", "met": None})
    return out


def file_targets(result: dict) -> list[dict]:
    """The targets of a result file judged again by today's rules (its rows, shape rows and seed rows): a file
    written before seeds were recorded gets "no verdict" on perplexity, whatever it said then."""
    runs = list((result.get("seed_rows") or {}).values()) or None
    return evaluate_targets(result.get("rows", []), result.get("shape_rows"), runs=runs)


def _paired(runs: list[list[dict]], a: str, b: str, key: str = "ppl") -> tuple[list[float], list[float]]:
    """(values of a, values of b) of `key` from the runs where both variants have it, in the same order."""
    xs, ys = [], []
    for rows in runs:
        ra = next((r for r in rows if r.get("variant") == a and isinstance(r.get(key), (int, float))), None)
        rb = next((r for r in rows if r.get("variant") == b and isinstance(r.get(key), (int, float))), None)
        if ra is not None and rb is not None:
            xs.append(float(ra[key]))
            ys.append(float(rb[key]))
    return xs, ys


def latency_effect(rows: list[dict], shape_rows: list[dict] | None = None) -> list[dict]:
    """INT8 variant / bf16 ratios of prefill latency and decode speed (>1 latency ratio = INT8 is slower)."""
    out = []
    by = {r["variant"]: r for r in rows if "ppl" in r}
    base = by.get("base")
    for name, r in by.items():
        if r["method"] == "float" or base is None:
            continue
        base_ms = {p["seq_len"]: p["latency_ms"] for p in base.get("prefill", [])}
        for p in r.get("prefill", []):
            if p["latency_ms"] and base_ms.get(p["seq_len"]):
                out.append({"model": "trained model", "variant": name, "what": f"prefill {p['seq_len']} tokens",
                            "int8 / float": p["latency_ms"] / base_ms[p["seq_len"]]})
        if r.get("decode_tok_s") and base.get("decode_tok_s"):
            out.append({"model": "trained model", "variant": name, "what": "decode time per token",
                        "int8 / float": base["decode_tok_s"] / r["decode_tok_s"]})
    shape_rows = shape_rows or []
    ref = {(r["kind"], r.get("seq_len")): r for r in shape_rows if r["mode"] == "bf16" and r.get("ok")}
    for r in shape_rows:
        if r["mode"] == "bf16" or not r.get("ok"):
            continue
        b = ref.get((r["kind"], r.get("seq_len")))
        if b is None:
            continue
        if r["kind"] == "prefill":
            out.append({"model": r["model"], "variant": r["variant"], "what": f"prefill {r['seq_len']} tokens",
                        "int8 / float": r["latency_ms"] / b["latency_ms"]})
        elif r["kind"] == "decode":
            out.append({"model": r["model"], "variant": r["variant"], "what": "decode time per token",
                        "int8 / float": b["decode_tok_s"] / r["decode_tok_s"]})
    return out


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


def checks_table(checks: dict[str, dict]) -> pd.DataFrame:
    """One row per variant: attention kernels that ran, matmul kernel evidence, INT8 == selection, unselected
    layers untouched.
    The full attention evidence of a variant is `checks[variant]["attention"]`."""
    cols = ["attention kernels", "backend", "matmul kernels", "int8_layers", "int8_matches_selection", "unselected_checked",
            "unselected_untouched", "head_still_tied", "fake_quantized_match", "ok"]
    table = pd.DataFrame.from_dict(checks, orient="index")
    table["attention kernels"] = [_kernels(c) for c in checks.values()]
    table["matmul kernels"] = [_matmuls(c) for c in checks.values()]
    return table[[c for c in cols if c in table.columns]]


def rows_table(rows: list[dict], digits: int | None = 2) -> pd.DataFrame:
    """Result rows as a DataFrame indexed by variant; floats rounded to `digits` for reading (None: as measured)."""
    table = pd.DataFrame(rows).set_index("variant")
    return table if digits is None else table.round(digits)


def ppl_paths_table(rows: list[dict], digits: int | None = 4) -> pd.DataFrame:
    """How each variant's perplexity was computed, and for a fast path its check against the real model on one
    batch: NLL and mean logit differences (relative), next-token agreement, the tolerance, and both forwards'
    seconds. Empty when no row says (files written before the paths were recorded)."""
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


def prefill_table(rows: list[dict], digits: int | None = 2) -> pd.DataFrame:
    """Tidy long format: one row per variant x prefill length (latency, peak and activation memory, OOM);
    floats rounded to `digits` (None: as measured)."""
    table = pd.DataFrame([{"variant": r["variant"], "method": r.get("method"), **p}
                          for r in rows for p in r.get("prefill", [])])
    return table if digits is None else table.round(digits)


def targets_table(targets: list[dict]):
    """Targets from `evaluate_targets` for display (a pandas Styler): whole sentences, left-aligned, and the
    verdict as judged (met / MISSED / within noise / no verdict / not measured)."""
    table = pd.DataFrame([{"target": t["target"], "measured": t["measured"],
                           "verdict": "MISSED" if t["verdict"] == "missed" else t["verdict"]} for t in targets])
    return (table.style.hide(axis="index")
            .set_properties(**{"text-align": "left", "white-space": "normal"})
            .set_properties(subset=["measured", "verdict"], **{"white-space": "nowrap"})
            .set_table_styles([{"selector": "th", "props": [("text-align", "left")]}]))
