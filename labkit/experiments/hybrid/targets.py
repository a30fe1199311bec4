"""The hybrid's targets judged from measured rows (met / missed / not measured), INT8-over-float ratios, and the
tables the notebook shows."""

from __future__ import annotations

import pandas as pd

EIGHTY_GB_GIB = 80e9 / 2**30  # an "80 GB" H100 in GiB


def evaluate_targets(rows: list[dict], shape_rows: list[dict] | None = None, long_len: int = 32768) -> list[dict]:
    """The issue's targets, judged from measured rows: met True/False, or None when not measured."""
    by = {r["variant"]: r for r in rows if "ppl" in r}
    out: list[dict] = []
    ref = by.get("base-ft")
    for mode in ("w8a8", "w8"):
        qat, ptq = by.get(f"qat-{mode}"), by.get(f"ptq-{mode}")
        if qat and ref:
            gap = qat["ppl"] / ref["ppl"] - 1
            out.append({"target": f"QAT ({mode}) perplexity within 1% of the equally fine-tuned float model",
                        "measured": f"{qat['ppl']:.3f} vs {ref['ppl']:.3f} ({gap:+.2%})", "met": gap <= 0.01})
        if qat and ptq:
            out.append({"target": f"QAT ({mode}) perplexity better than PTQ ({mode}) of the same layers",
                        "measured": f"{qat['ppl']:.3f} vs {ptq['ppl']:.3f}", "met": qat["ppl"] < ptq["ppl"]})
        ft_ptq = by.get(f"ft-ptq-{mode}")
        if qat and ft_ptq:
            out.append({"target": f"(stricter, not in the issue) QAT ({mode}) better than fine-tune-then-PTQ ({mode})",
                        "measured": f"{qat['ppl']:.3f} vs {ft_ptq['ppl']:.3f}", "met": qat["ppl"] < ft_ptq["ppl"]})
    shape_rows = shape_rows or []
    shape = shape_rows[0]["model"] if shape_rows else ""
    weights = {r["mode"]: r["weight_gib"] for r in shape_rows if r.get("weight_gib") is not None}
    for mode in ("w8", "w8a8"):
        if mode in weights and "bf16" in weights:
            ratio = weights[mode] / weights["bf16"]
            out.append({"target": f"{shape} shape: INT8 feed-forward ({mode}) weight memory <= 0.7x bf16",
                        "measured": f"{weights[mode]:.2f} / {weights['bf16']:.2f} GiB = {ratio:.3f}x",
                        "met": ratio <= 0.7})
        long = [r for r in shape_rows if r["mode"] == mode and r.get("kind") == "prefill" and r["seq_len"] == long_len]
        if long:
            r = long[0]
            fits = bool(r["ok"]) and r.get("peak_gib") is not None and r["peak_gib"] <= EIGHTY_GB_GIB  # measured on any GPU, judged for an 80 GB one
            out.append({"target": f"{shape} shape: INT8 feed-forward ({mode}) + FA2 reaches {long_len} tokens "
                                  "within an 80 GB GPU's memory",
                        "measured": (f"ok, peak {r.get('peak_gib') or float('nan'):.1f} GiB (80 GB = {EIGHTY_GB_GIB:.1f} GiB)" if r["ok"]
                                     else ("out of memory" if r["oom"] else f"failed: {r.get('error')}")),
                        "met": fits})
    if not out:
        out.append({"target": "(none measured in this run)", "measured": "", "met": None})
    return out


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


def checks_table(checks: dict[str, dict]) -> pd.DataFrame:
    """One row per variant: attention kernels that ran, INT8 == selection, unselected layers untouched.
    The full attention evidence of a variant is `checks[variant]["attention"]`."""
    cols = ["attention kernels", "backend", "int8_layers", "int8_matches_selection", "unselected_checked",
            "unselected_untouched", "head_still_tied", "fake_quantized_match", "ok"]
    table = pd.DataFrame.from_dict(checks, orient="index")
    table["attention kernels"] = [_kernels(c) for c in checks.values()]
    return table[[c for c in cols if c in table.columns]]


def rows_table(rows: list[dict], digits: int | None = 2) -> pd.DataFrame:
    """Result rows as a DataFrame indexed by variant; floats rounded to `digits` for reading (None: as measured)."""
    table = pd.DataFrame(rows).set_index("variant")
    return table if digits is None else table.round(digits)


def prefill_table(rows: list[dict], digits: int | None = 2) -> pd.DataFrame:
    """Tidy long format: one row per variant x prefill length (latency, peak and activation memory, OOM);
    floats rounded to `digits` (None: as measured)."""
    table = pd.DataFrame([{"variant": r["variant"], "method": r.get("method"), **p}
                          for r in rows for p in r.get("prefill", [])])
    return table if digits is None else table.round(digits)


def targets_table(targets: list[dict]):
    """Targets from `evaluate_targets` for display (a pandas Styler): whole sentences, left-aligned, and the
    verdict as met / MISSED / not measured."""
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    table = pd.DataFrame([{"target": t["target"], "measured": t["measured"], "verdict": verdict[t["met"]]}
                          for t in targets])
    return (table.style.hide(axis="index")
            .set_properties(**{"text-align": "left", "white-space": "normal"})
            .set_properties(subset=["measured", "verdict"], **{"white-space": "nowrap"})
            .set_table_styles([{"selector": "th", "props": [("text-align", "left")]}]))
