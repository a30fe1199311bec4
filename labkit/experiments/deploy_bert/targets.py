"""The deploy targets, each judged from the measured numbers: met, missed, within noise or not measured."""

from __future__ import annotations

from labkit.experiments.deploy_bert.options import INT8_DEPLOY


def target_checks(data: dict) -> list[dict]:
    """The deploy targets, each from the measured numbers: met / missed / within noise / not measured."""
    lat = {(r["variant"], r["threads"], r["batch"]): r for r in data.get("latency", [])}
    acc = data.get("accuracy", {})
    sizes = data.get("sizes_mb", {})
    checks = []
    base, peer = lat.get(("torch-fp32", 1, 8)), lat.get(("ort-peer-int8", 1, 8))
    best = min((lat[(v, 1, 8)] for v in INT8_DEPLOY if (v, 1, 8) in lat), key=lambda r: r["p50_ms"], default=None)
    if base and best and peer:
        ratio = best["p50_ms"] / base["p50_ms"]
        checks.append({"target": "best INT8 deploy path <= 0.40x PyTorch FP32 eager (batch 8 x 128, 1 thread)",
                       "measured": f"{best['variant']} {best['p50_ms']:.1f} ms vs FP32 eager {base['p50_ms']:.1f} ms: "
                                   f"{ratio:.2f}x (peer {peer['p50_ms'] / base['p50_ms']:.2f}x)",
                       "value": ratio, "limit": 0.40, "met": ratio <= 0.40})
        faster = best["p90_ms"] < peer["p10_ms"]
        overlap = not faster and best["p50_ms"] < peer["p50_ms"]
        checks.append({"target": "best INT8 deploy path faster than the peer (ORT quantize_dynamic)",
                       "measured": f"{best['variant']} p10-p90 {best['p10_ms']:.1f}-{best['p90_ms']:.1f} ms vs peer "
                                   f"{peer['p10_ms']:.1f}-{peer['p90_ms']:.1f} ms",
                       "value": best["p50_ms"] / peer["p50_ms"], "limit": 1.0,
                       "met": True if faster else ("within noise" if overlap else False)})
    else:
        checks.append({"target": "latency targets", "measured": "not measured in this run", "met": None})
    n = data.get("training", {}).get("n_eval") or 0
    if "ort-qat-int8" in acc and "torch-fp32" in acc:
        gap = (acc["torch-fp32"]["accuracy"] - acc["ort-qat-int8"]["accuracy"]) * 100
        checks.append({"target": "deployed INT8 accuracy within 0.3 points of FP32",
                       "measured": f"ORT QAT INT8 {acc['ort-qat-int8']['accuracy'] * 100:.2f} vs FP32 "
                                   f"{acc['torch-fp32']['accuracy'] * 100:.2f} ({-gap:+.2f} points, n={n})",
                       "value": gap, "limit": 0.3, "met": gap <= 0.3})
    if "ort-qat-int8" in acc and "ort-peer-int8" in acc:
        d = (acc["ort-qat-int8"]["accuracy"] - acc["ort-peer-int8"]["accuracy"]) * 100
        noise = 100 / max(n, 1)  # one example, in points
        checks.append({"target": "deployed INT8 accuracy not below the peer's beyond noise",
                       "measured": f"QAT INT8 {d:+.2f} points vs peer (one example = {noise:.2f} points)",
                       "value": d, "limit": -noise, "met": d >= -noise})
    if "torchao-int8" in acc and "ort-qat-int8" in acc:
        d = (acc["ort-qat-int8"]["accuracy"] - acc["torchao-int8"]["accuracy"]) * 100
        checks.append({"target": "deployed artifact matches the PyTorch QAT model within 0.1 point",
                       "measured": f"ORT {acc['ort-qat-int8']['accuracy'] * 100:.2f} vs torchao "
                                   f"{acc['torchao-int8']['accuracy'] * 100:.2f} ({d:+.2f} points)",
                       "value": d, "limit": 0.1, "met": abs(d) <= 0.1})
    if "qat-int8" in sizes and "torch-fp32" in sizes:
        r = sizes["qat-int8"] / sizes["torch-fp32"]
        checks.append({"target": "INT8 size <= 0.3x FP32, embeddings included",
                       "measured": f"{sizes['qat-int8']:.1f} MB vs {sizes['torch-fp32']:.1f} MB: {r:.2f}x",
                       "value": r, "limit": 0.3, "met": r <= 0.3})
    return checks
