"""The deploy targets, judged over the seeds with their spread: met, missed, within noise, or not measured.

Accuracy targets take one value per seed (paired within the seed) and `labkit.measure.stats.verdict`: met or
missed only with >= 3 seeds and a margin beyond the spread and one eval sentence. "The deployed artifact matches
the PyTorch QAT model" is judged against a floor measured in the same run: how many sentences torchao's own
compiled model labels differently from torchao eager. Latency compares p50 with the p10-p90 spreads.
"""

from __future__ import annotations

from labkit.experiments.deploy_bert.options import INT8_DEPLOY
from labkit.measure.stats import MIN_SEEDS, format_spread, ratio_verdict, spread, verdict, verdict_text

FP32_GAP_LIMIT = 0.3  # points: deployed INT8 at most this far below FP32
MATCH_LIMIT = 0.1  # points: the deployed artifact vs the PyTorch QAT model
LATENCY_LIMIT = 0.40  # best INT8 deploy path / PyTorch FP32 eager, batch 8 x 128, 1 thread
SIZE_LIMIT = 0.3


def _acc(seed: dict, variant: str) -> float | None:
    a = seed.get("accuracy", {}).get(variant)
    return None if a is None else 100 * a["accuracy"]


def _paired(seeds: list[dict], a: str, b: str) -> list[float]:
    """(a - b) accuracy in points, per seed where both were measured."""
    return [_acc(s, a) - _acc(s, b) for s in seeds if _acc(s, a) is not None and _acc(s, b) is not None]


def _not_measured(target: str) -> dict:
    return {"target": target, "measured": "not measured in this run", "verdict": "not measured", "met": None}


def match_check(seeds: list[dict]) -> dict:
    """"Deployed artifact matches the PyTorch QAT model within 0.1 point": mean ORT - torchao difference over
    seeds, the sentences whose label differs per seed, and torchao compiled vs eager as the noise floor.
    met: mean |difference| <= 0.1 point; within noise: larger, but not larger than the floor; else missed;
    no verdict with fewer than 3 seeds."""
    target = f"deployed artifact matches the PyTorch QAT model within {MATCH_LIMIT} point"
    diffs = _paired(seeds, "ort-qat-int8", "torchao-int8")
    if not diffs:
        return _not_measured(target)
    used = [s for s in seeds if _acc(s, "ort-qat-int8") is not None and _acc(s, "torchao-int8") is not None]
    differ = [s.get("differ_from_torchao_eager", {}).get("ort-qat-int8") for s in used]
    floor_n = [s.get("differ_from_torchao_eager", {}).get("torchao-int8-compiled") for s in used]
    floor_pts = [100 * f / s["n_eval"] for f, s in zip(floor_n, used, strict=True) if f is not None]
    sp = spread(diffs)
    size = abs(sp.mean)
    floor = spread(floor_pts).mean if floor_pts else None
    if sp.n < MIN_SEEDS:
        word = "no verdict"
    elif size <= MATCH_LIMIT:
        word = "met"
    elif floor is not None and size <= floor:
        word = "within noise"
    else:
        word = "missed"
    floor_text = (f"torchao compiled vs eager differ on {floor_n} sentences = {floor:.2f} points (the floor)"
                  if floor is not None else "no compiled-vs-eager floor measured")
    return {"target": target,
            "measured": f"ORT - torchao {format_spread(sp)} points; sentences labelled differently per seed "
                        f"{differ} of {used[0]['n_eval']}; {floor_text}",
            "value": sp.mean, "sd": sp.sd, "seeds": sp.n, "limit": MATCH_LIMIT, "floor": floor,
            "differ_per_seed": differ, "floor_per_seed": floor_n, "verdict": word,
            "met": {"met": True, "missed": False}.get(word)}


def accuracy_checks(seeds: list[dict]) -> list[dict]:
    """The three accuracy targets over the seeds (each seed: accuracy by variant, n_eval, label agreement)."""
    checks = []
    n = min((s.get("n_eval") or 0 for s in seeds), default=0)
    resolution = 100 / n if n else 0.0  # one eval sentence, in points
    gaps = _paired(seeds, "ort-qat-int8", "torch-fp32")
    if gaps:
        v = verdict(gaps, -FP32_GAP_LIMIT, at_least=True, resolution=resolution)
        checks.append({"target": f"deployed INT8 accuracy within {FP32_GAP_LIMIT} points of FP32",
                       "measured": f"ORT QAT INT8 {format_spread(spread(_accs(seeds, 'ort-qat-int8')))} vs FP32 "
                                   f"{format_spread(spread(_accs(seeds, 'torch-fp32')))}; INT8 - FP32 per seed "
                                   f"{verdict_text(v)} points (n_eval={n})",
                       "value": v["mean"], "sd": v["sd"], "seeds": v["n"], "limit": -FP32_GAP_LIMIT,
                       "verdict": v["verdict"], "met": v["met"]})
    else:
        checks.append(_not_measured(f"deployed INT8 accuracy within {FP32_GAP_LIMIT} points of FP32"))
    peer = _paired(seeds, "ort-qat-int8", "ort-peer-int8")
    if peer:
        v = verdict(peer, 0.0, at_least=True, resolution=resolution)
        checks.append({"target": "deployed INT8 accuracy not below the peer's beyond noise",
                       "measured": f"QAT INT8 - peer per seed {verdict_text(v)} points (noise: the sd over seeds, at "
                                   f"least one sentence = {resolution:.2f} points; within noise is no loss beyond it)",
                       "value": v["mean"], "sd": v["sd"], "seeds": v["n"], "limit": 0.0, "verdict": v["verdict"],
                       "met": v["met"]})
    else:
        checks.append(_not_measured("deployed INT8 accuracy not below the peer's beyond noise"))
    checks.append(match_check(seeds))
    return checks


def _accs(seeds: list[dict], variant: str) -> list[float]:
    return [a for s in seeds if (a := _acc(s, variant)) is not None] or [float("nan")]


def _timing(row: dict) -> tuple[float, float, float]:
    return row["p10_ms"], row["p50_ms"], row["p90_ms"]


def latency_checks(rows: list[dict]) -> list[dict]:
    """The two latency targets at batch 8 x 128, 1 thread; spreads decide "within noise"."""
    lat = {(r["variant"], r["threads"], r["batch"]): r for r in rows}
    base, peer = lat.get(("torch-fp32", 1, 8)), lat.get(("ort-peer-int8", 1, 8))
    best = min((lat[(v, 1, 8)] for v in INT8_DEPLOY if (v, 1, 8) in lat), key=lambda r: r["p50_ms"], default=None)
    if not (base and best and peer):
        return [_not_measured(f"best INT8 deploy path <= {LATENCY_LIMIT:.2f}x PyTorch FP32 eager (batch 8 x 128, "
                              "1 thread)"), _not_measured("best INT8 deploy path faster than the peer")]
    r = ratio_verdict(_timing(best), _timing(base), LATENCY_LIMIT, at_most=True)
    checks = [{"target": f"best INT8 deploy path <= {LATENCY_LIMIT:.2f}x PyTorch FP32 eager (batch 8 x 128, 1 thread)",
               "measured": f"{best['variant']} {best['p50_ms']:.1f} ms vs FP32 eager {base['p50_ms']:.1f} ms: "
                           f"{r['ratio']:.2f}x (spread {r['ratio_low']:.2f}-{r['ratio_high']:.2f}x; peer "
                           f"{peer['p50_ms'] / base['p50_ms']:.2f}x)",
               "value": r["ratio"], "limit": LATENCY_LIMIT, "verdict": r["verdict"], "met": r["met"]}]
    overlap = best["p10_ms"] <= peer["p90_ms"] and peer["p10_ms"] <= best["p90_ms"]
    word = "within noise" if overlap else ("met" if best["p50_ms"] < peer["p50_ms"] else "missed")
    checks.append({"target": "best INT8 deploy path faster than the peer (ORT quantize_dynamic)",
                   "measured": f"{best['variant']} p50 {best['p50_ms']:.1f} ms (p10-p90 {best['p10_ms']:.1f}-"
                               f"{best['p90_ms']:.1f}) vs peer p50 {peer['p50_ms']:.1f} ms ({peer['p10_ms']:.1f}-"
                               f"{peer['p90_ms']:.1f}): {'spreads overlap' if overlap else 'spreads apart'}",
                   "value": best["p50_ms"] / peer["p50_ms"], "limit": 1.0, "verdict": word,
                   "met": {"met": True, "missed": False}.get(word)})
    return checks


def size_check(sizes: dict) -> dict:
    target = f"INT8 size <= {SIZE_LIMIT}x FP32, embeddings included"
    if "qat-int8" not in sizes or "torch-fp32" not in sizes:
        return _not_measured(target)
    r = sizes["qat-int8"] / sizes["torch-fp32"]
    word = "met" if r <= SIZE_LIMIT else "missed"
    return {"target": target, "measured": f"{sizes['qat-int8']:.1f} MB vs {sizes['torch-fp32']:.1f} MB: {r:.2f}x",
            "value": r, "limit": SIZE_LIMIT, "verdict": word, "met": word == "met"}


def target_checks(data: dict) -> list[dict]:
    """Every deploy target from a result (seed_results by seed, latency rows, sizes): each check has "verdict"
    (met / missed / within noise / no verdict / not measured) and "met" (True / False / None)."""
    seeds = [data["seed_results"][k] for k in sorted(data.get("seed_results", {}), key=int)]
    sizes = seeds[0].get("sizes_mb", {}) if seeds else {}
    return latency_checks(data.get("latency", [])) + accuracy_checks(seeds) + [size_check(sizes)]
