"""`python -m labkit.bench hybrid`: FA2 attention + 8-bit selected layers against bf16 (notebook 03), and its
targets. Part 1, the trained model (`--model`; none skips it): per-layer sensitivity, every variant (`variant`
records: perplexity, size, checks, speed once per kind of kernels), the fine-tuned variants again for each further
seed (`seed`). Part 2, the llama-2-7b shape with random weights on a GPU (`--shape`; none skips it): bf16 + FA2
against 8-bit feed-forward + FA2 at 8k and 32k tokens and decode (`shape`), under a cap of the GPU's memory.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from labkit.attention.backends import check_backend, set_backend
from labkit.experiments.hybrid.config import SHAPE_MODES, VARIANTS, HybridConfig, missing_parents, needed_variants
from labkit.experiments.hybrid.pipeline import check_hybrid, quantize_mode, run_hybrid
from labkit.lm.perplexity import wikitext_blocks
from labkit.measure.decode import decode_tokens_per_s
from labkit.measure.memory import GIB, GpuMemoryCap, error_text, is_memory_error, release_memory
from labkit.measure.prefill import prefill_point
from labkit.measure.stats import Target, format_spread, paired_differences, per_seed, spread, verdict, verdict_text
from labkit.models import SHAPES, UnknownModelError, build_from_shape, load_causal_lm, meta_model
from labkit.quant.selection import FEED_FORWARD, EmptySelectionError, LayerSelection, resolve_layers

NAME = "hybrid"
Settings = HybridConfig
SENSITIVITY_BLOCKS = {"quick": (0, 29), "full": (0, 10, 20, 29)}  # on a CPU; a GPU measures every Linear
EIGHTY_GB_GIB = 80e9 / 2**30  # an "80 GB" H100 in GiB
QAT_VARIANTS = ("qat-w8a8", "qat-w8", "qat-fp8", "qat-w8-labkit")
"""The QAT variants judged against the equally fine-tuned float model (and against PTQ of their own mode)."""
NOTES = [
    "perplexity: WikiText-2 test; fine-tuning (base-ft and QAT, same recipe): WikiText-2 validation",
    "attention: FlashAttention-2 (SDPA forced to the flash kernel) on a GPU; PyTorch SDPA on a CPU",
    "size_mb: bytes of every distinct weight (INT8 codes + scales), tied weights once",
    "peak_gib: GPU torch.cuda.max_memory_allocated with one model on the GPU; CPU: process peak RSS",
]


def _check_layers(model: nn.Module, layers, what: str) -> None:
    try:
        resolve_layers(model, layers)
    except (EmptySelectionError, re.error) as err:
        example = next((n for n, m in model.named_modules() if isinstance(m, nn.Linear)), "")
        raise ValueError(f"--layers {layers!r} selects no Linear layer of {what} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); use 'feed-forward', 'all-linear' or a regular expression "
                         f"on module names such as {example!r}") from None


def check(cfg: HybridConfig, options) -> None:
    """Model and shape (configs only), layer pattern (resolved on a weightless copy), variants, lengths against
    the model's context."""
    if missing := missing_parents(cfg.variants):
        child, parent = missing[0]
        raise ValueError(f"--variants {','.join(cfg.variants)}: {child} starts from {parent}'s model; add {parent}")
    if cfg.memory_cap_gb < 0:
        raise ValueError(f"--memory-cap-gb {cfg.memory_cap_gb}: give a size in GB above 0, or 0 for no cap")
    if cfg.model.lower() != "none":
        try:
            skeleton = meta_model(cfg.model, "causal_lm")
        except UnknownModelError as err:
            raise ValueError(f"--model {cfg.model!r}: {err} Or --model none to skip this part.") from None
        _check_layers(skeleton, cfg.layers, cfg.model)
        context = getattr(skeleton.config, "max_position_embeddings", None)
        longest = max(cfg.seq_len, *cfg.prefill_lengths)
        if context and longest > context and not cfg.allow_beyond_context:
            raise ValueError(f"{'--seq-len' if cfg.seq_len == longest else '--prefill-lens'} {longest}: longer than "
                             f"{cfg.model}'s context of {context} tokens; use shorter lengths or add "
                             "--allow-beyond-context")
    if cfg.shape.lower() != "none":
        if cfg.shape not in SHAPES:
            raise ValueError(f"--shape {cfg.shape!r}: unknown shape; choose from {', '.join(SHAPES)} or none")
        if torch.device(cfg.device).type == "cuda":
            _check_layers(meta_model(cfg.shape, "any_causal_lm"), cfg.layers, f"the {cfg.shape} shape")


def measure(cfg: HybridConfig, run) -> None:
    started, result = time.perf_counter(), run.result
    result.update(profile=cfg.profile, meta={}, selected=[], rows=[], checks={}, losses={}, sensitivity=None,
                  shape_rows=[], latency_effect=[], errors=[], seed_rows={}, memory_cap=None,
                  notes=[*NOTES, f"{cfg.shape}: random weights, speed and memory only"])

    def say(msg: str) -> None:
        print(f"[hybrid {time.perf_counter() - started:6.0f} s] {msg.strip()}", flush=True)

    def failed(part: str, err: BaseException | str) -> None:
        text = err if isinstance(err, str) else error_text(err)
        result["errors"].append({"stage": part, "error": text})
        run.fail(f"{part}: {text}")

    if cfg.model.lower() != "none":
        _trained_part(cfg, run, say, failed)
    if cfg.shape.lower() != "none":
        _shape_part(cfg, run, say, failed)
    result["latency_effect"] = latency_effect(result["rows"], result["shape_rows"])
    result["elapsed_s"] = round(time.perf_counter() - started, 1)


def _failed_rows(rows: list[dict]) -> list[dict]:
    """The rows of variants that failed (an error, or their after-conversion checks)."""
    return [r for r in rows if "error" in r or r.get("checks_ok") is False]


def _trained_part(cfg: HybridConfig, run, say, failed) -> None:
    """Load the trained model, sensitivity table, every variant (each recorded as it finishes), further seeds."""
    result = run.result
    say(f"loading {cfg.model}")
    try:
        model, tokenizer = load_causal_lm(cfg.model, dtype=torch.float32, device="cpu")
    except Exception as err:  # noqa: BLE001 - e.g. the embedded model is not installed on the GPU machine
        return failed("load", f"--model {cfg.model} could not be loaded: {error_text(err)}")
    if cfg.sensitivity:
        try:
            result["sensitivity"] = run.once("sensitivity", lambda: _sensitivity(model, tokenizer, cfg))
        except Exception as err:  # noqa: BLE001
            failed("sensitivity", err)
    done = {r["row"]["variant"]: r for r in run.recorded("variant") if "error" not in r["row"]}
    # a variant that starts from another one's model (ft-ptq-* from base-ft, qat-w8-labkit from qat-w8) needs it
    # made again (same seed, same recipe)
    todo = needed_variants(v for v in cfg.variants if v not in done)
    items = {name: item for name, item in done.items() if name not in todo}

    def collect() -> None:
        result["rows"] = [items[v]["row"] for v in VARIANTS if v in items]
        for key in ("checks", "losses"):
            result[key] = {n: items[n][key] for n in VARIANTS if n in items and items[n].get(key)}

    def on_row(row: dict, res) -> None:
        v = row["variant"]
        items[v] = run.record("variant", {"row": row, "checks": res.checks.get(v), "losses": res.losses.get(v)},
                              quiet=True)
        result.update(meta=res.meta, selected=res.selected)
        collect()

    collect()
    if len(items):
        say(f"resume: {', '.join(items)} already measured")
    if todo:
        try:
            run_hybrid(replace(cfg, variants=tuple(todo)), model, tokenizer, on_row=on_row, progress=False, log=say)
        except Exception as err:  # noqa: BLE001
            failed("variants", err)
    if bad := [r for r in result["rows"] if "error" in r]:
        run.fail(f"{len(bad)} of {len(result['rows'])} variants failed ("
                 + "; ".join(f"{r['variant']}: {r['error']}" for r in bad)[:400] + ")")
    if unchecked := [r["variant"] for r in result["rows"] if r.get("checks_ok") is False]:
        run.fail(f"after-conversion checks failed (attention kernel, integer matmul, INT8 layers or untouched rest): "
                 f"{', '.join(unchecked)}; see checks")
    # further seeds: the variants that depend on the seed (they fine-tune, or quantize a fine-tuned model), among
    # those that worked on the first seed (a failed one is already a failed run); the others stand in every seed
    good = needed_variants(r["variant"] for r in result["rows"] if "error" not in r)
    trained = tuple(v for v in good if VARIANTS[v].train)
    fixed = [r for r in result["rows"] if r["variant"] not in trained]
    earlier = {r["seed"]: r["rows"] for r in run.recorded("seed") if not _failed_rows(r["rows"])}
    for seed in cfg.seeds[1:] if trained else ():
        if seed not in earlier:
            say(f"seed {seed}: {', '.join(trained)} (perplexity only)")
            try:
                earlier[seed] = run_hybrid(replace(cfg, seed=seed, speed=False, variants=trained), model, tokenizer,
                                           progress=False, log=say).rows
            except Exception as err:  # noqa: BLE001
                failed(f"seed {seed}", err)
                continue
            run.record("seed", {"seed": seed, "rows": earlier[seed]}, quiet=True)
        if bad := _failed_rows(earlier[seed]):  # its targets would rest on fewer seeds than asked for
            run.fail(f"seed {seed}: {len(bad)} variant(s) failed ("
                     + "; ".join(f"{r['variant']}: {r.get('error', 'after-conversion checks failed')}"
                                 for r in bad)[:400] + "); --resume measures this seed again")
        result["seed_rows"] = {str(cfg.seeds[0]): list(result["rows"]), **result["seed_rows"],
                               str(seed): earlier[seed] + fixed}
    del model
    release_memory()


def _sensitivity(model, tokenizer, cfg: HybridConfig) -> dict:
    """Sensitivity of every Linear (GPU) or of a few blocks (CPU) on calibration blocks of WikiText-2 validation."""
    from labkit.quant.sensitivity import describe_linears, layer_sensitivity

    device = torch.device(cfg.device)
    gpu, quick = device.type == "cuda", cfg.profile == "quick"
    work = copy.deepcopy(model).to(device=device, dtype=cfg.torch_dtype())
    n_batches, seq = (4, 512) if gpu else ((1, 128) if quick else (2, min(cfg.seq_len, 256)))
    batches = wikitext_blocks(tokenizer, "validation", seq, n_batches, cfg.data_dir)
    layers = None
    if not gpu:
        info = describe_linears(work)
        keep = info["block"].isin(SENSITIVITY_BLOCKS[cfg.profile]) | info["block"].isna()
        layers = list(info.loc[keep, "name"])
    table = layer_sensitivity(work, batches, layers, mode="w8a8", progress=False)
    del work
    release_memory(device)
    return {"attrs": dict(table.attrs), "rows": json.loads(table.to_json(orient="records"))}


# ---------------------------------------------------------------------------------------------------------------
# the speed-and-memory half on a real shape with random weights: its outputs mean nothing, its speed is real


def _shape_part(cfg: HybridConfig, run, say, failed) -> None:
    result, device = run.result, torch.device(cfg.device)
    if device.type != "cuda":
        result["notes"].append(f"{cfg.shape} shape part skipped: it needs an NVIDIA GPU (FA2, ~14 GB of weights)")
        return say(f"{cfg.shape} part skipped: no CUDA GPU here")
    done = run.recorded("shape")
    finished = {r["mode"] for r in done if r.get("kind") == "decode"}
    result["shape_rows"] = [r for r in done if r["mode"] in finished]
    modes = tuple(m for m in cfg.shape_modes if m not in finished)
    say(f"{cfg.shape} shape (random weights): speed and memory")
    try:
        with GpuMemoryCap(cfg.memory_cap_gb * 1e9 if cfg.memory_cap_gb else None, device) as cap:
            result["memory_cap"] = cap.as_dict()
            capped = cap.as_dict()["cap_gib"] if cap.fraction else None
            if modes:
                shape_benchmark(cfg.shape, cfg.shape_lens, cfg.layers, modes, device=device, log=say,
                                on_row=lambda row: result["shape_rows"].append(
                                    run.record("shape", {**row, "memory_cap_gib": capped}, quiet=True)))
    except Exception as err:  # noqa: BLE001 - recorded; the file keeps what was measured
        failed("shape", err)
    for bad in sorted({f"{r['variant']}: {r.get('matmul')}" for r in result["shape_rows"] if r.get("matmul_ok") is False}):
        run.fail(f"integer kernel check: {bad}")


def shape_benchmark(shape: str = "llama-2-7b", lengths: tuple[int, ...] = (8192, 32768),
                    layers: LayerSelection = FEED_FORWARD, modes: tuple[str, ...] = ("bf16", "w8", "w8a8"), *,
                    device: torch.device | str = "cuda", backend: str = "fa2", decode_prompt: int = 128,
                    decode_tokens: int = 32, on_row: Callable[[dict], None] | None = None,
                    log: Callable[[str], None] | None = print) -> list[dict]:
    """bf16 + FA2 against 8-bit `layers` + FA2 on a random-weight real shape: weights, prefill latency and peak memory
    per length, decode tokens/s. One model on the device at a time; OOM is a data point. Meant for a GPU;
    `device="cpu", backend="sdpa"` with a tiny shape only exercises the code (tests)."""
    from labkit.quant.kernel_evidence import SHAPE_MODE_CLAIMS
    from labkit.quant.size import weight_bytes

    say, device = log or (lambda s: None), torch.device(device)
    if backend == "fa2" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise RuntimeError(f"the {shape} shape benchmark with FA2 needs an NVIDIA GPU (FlashAttention-2 is CUDA-only "
                           "and a 7B bf16 model alone needs ~13.5 GB); on a CPU read the committed GPU results instead")
    check_backend(backend, device, torch.bfloat16)
    if bad := [m for m in modes if m not in SHAPE_MODES]:
        raise ValueError(f"unknown mode(s) {bad}; use {SHAPE_MODES}")
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for mode in modes:
        variant = (f"bf16+{backend}" if mode == "bf16" else f"fp8-ff+{backend}" if mode == "fp8"
                   else f"int8-ff-{mode}+{backend}")
        base, model = {"model": shape, "weights": "random (speed and memory only)", "variant": variant, "mode": mode}, None
        try:
            release_memory(device)
            t0 = time.perf_counter()
            model = set_backend(build_from_shape(shape, dtype=torch.bfloat16, device=device), backend)
            if mode != "bf16":
                linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
                before = {n: id(m.weight) for n, m in linears.items()}
                selected = resolve_layers(model, layers)
                quantized = quantize_mode(model, mode, selected)
                untouched = all(id(m.weight) == before[n] and type(m.weight) is nn.Parameter
                                and type(m.weight.data) is torch.Tensor for n, m in linears.items() if n not in selected)
                base.update(int8_layers=len(quantized), int8_matches_selection=quantized == selected,
                            unselected_untouched=untouched, **({"quantized_format": "fp8 e4m3 row-wise"}
                                                               if mode == "fp8" else {}))
            base.update(weight_gib=weight_bytes(model) / GIB, build_s=time.perf_counter() - t0)
            say(f"{shape} {variant}: weights {base['weight_gib']:.2f} GiB")
        except Exception as err:  # noqa: BLE001
            emit({**base, "kind": "build", "ok": False, "oom": is_memory_error(err), "error": error_text(err)})
            say(f"{shape} {variant}: build FAILED {error_text(err)}")
            del model
            release_memory(device)
            continue
        try:
            claim, need_kernel = SHAPE_MODE_CLAIMS[mode]
            ev = check_hybrid(model, [], None, backend, quantized=False, mode=claim, require_weight_kernel=need_kernel)
            base.update(attention_ok=ev["attention_ok"], attention=ev["attention"], matmul_ok=ev.get("matmul_ok"),
                        matmul=ev.get("matmul"))
        except Exception as err:  # noqa: BLE001
            base.update(attention_ok=False, attention=error_text(err), matmul_ok=False)
        for n in lengths:
            p = prefill_point(model, n)
            emit({**base, "kind": "prefill", "seq_len": n, "ok": p.ok, "oom": p.oom, "latency_ms": p.latency_ms,
                  "p10_ms": p.p10_ms, "p90_ms": p.p90_ms, "repeats": p.repeats, "peak_gib": p.peak_gib,
                  "error": p.error})
            say(f"  prefill {n:>6}: " + (f"{p.latency_ms:.1f} ms, peak {p.peak_gib:.2f} GiB" if p.ok else
                                         f"{'OOM' if p.oom else 'FAILED'} {p.error or ''}"))
        try:
            d = decode_tokens_per_s(model, decode_prompt, decode_tokens)
            emit({**base, "kind": "decode", "ok": True, "oom": False, **d})
        except Exception as err:  # noqa: BLE001
            emit({**base, "kind": "decode", "ok": False, "oom": is_memory_error(err), "error": error_text(err)})
        del model
        release_memory(device)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# targets and the INT8-over-float ratios


def _mode_words(mode: str, row: dict | None) -> str:
    """How a target names a mode: 'w8a8', 'fp8, fake-quantized' (no FP8 kernels ran), 'w8, labkit kernel'."""
    if mode == "w8-labkit":
        return "w8, labkit kernel"
    return "fp8, fake-quantized" if mode == "fp8" and row is not None and row.get("fp8_numerics") == "fake" else mode


def targets(result: dict, long_len: int = 32768) -> list[Target]:
    """The hybrid targets, judged from a result's rows, shape rows and seed rows (a file written before seeds were
    recorded is one seed, so its perplexity targets get no verdict).

    QAT perplexity (INT8 w8a8 / w8, FP8 row-wise, INT8 w8 on labkit's kernel) within 1% of the float model fine-tuned
    alike (8-bit costs almost nothing) and better than PTQ of the same layers and mode (QAT earns its training),
    judged on the per-seed differences: met / missed only with >= 3 seeds and a mean farther from the limit than the
    spread. On the big shape: INT8 feed-forward weights at most 0.7x bf16, and 32k tokens within an 80 GB card (the
    memory the hybrid buys)."""
    rows, shape_rows = result.get("rows", []), result.get("shape_rows") or []
    runs = list((result.get("seed_rows") or {}).values()) or [rows]
    by = {r["variant"]: r for r in rows if "ppl" in r}
    out: list[Target] = []

    def ppl_of(variant: str) -> str:
        values = per_seed(runs, variant, "ppl")
        return format_spread(spread(values), 3) if values else "n/a"

    for qat_name in (q for q in QAT_VARIANTS if q in by):
        mode = qat_name.removeprefix("qat-")
        what = _mode_words(mode, by[qat_name])
        if "base-ft" in by:
            gaps = paired_differences(runs, qat_name, "base-ft", "ppl", fn=lambda q, f: 100 * (q / f - 1))
            v = verdict(gaps, 1.0, at_least=False)
            out.append(Target.judged(f"QAT ({what}) perplexity within 1% of the equally fine-tuned float model",
                                     f"QAT {ppl_of(qat_name)} vs {ppl_of('base-ft')}; gap per seed {verdict_text(v)} %",
                                     v, seeds=v["n"], variant=qat_name))
        for other, label in ((f"ptq-{mode}", f"QAT ({what}) perplexity better than PTQ ({mode}) of the same layers"),
                             (f"ft-ptq-{mode}", f"(stricter) QAT ({what}) better than fine-tune-then-PTQ ({mode})")):
            if other in by:
                v = verdict(paired_differences(runs, other, qat_name, "ppl"), 0.0, at_least=True)  # > 0: QAT better
                out.append(Target.judged(label, f"QAT {ppl_of(qat_name)} vs {ppl_of(other)}; {other} - QAT per seed "
                                                f"{verdict_text(v, 3)}", v, seeds=v["n"], variant=qat_name))
    shape = shape_rows[0]["model"] if shape_rows else ""
    weights = {r["mode"]: r["weight_gib"] for r in shape_rows if r.get("weight_gib") is not None}
    for mode in ("w8", "w8a8"):
        if mode in weights and "bf16" in weights:
            ratio = weights[mode] / weights["bf16"]
            out.append(Target.exact(f"{shape} shape: INT8 feed-forward ({mode}) weight memory <= 0.7x bf16",
                                    f"{weights[mode]:.2f} / {weights['bf16']:.2f} GiB = {ratio:.3f}x (exact: bytes)",
                                    ratio <= 0.7, ratio, 0.7))
        r = next((r for r in shape_rows if r["mode"] == mode and r.get("kind") == "prefill"
                  and r["seq_len"] == long_len), None)
        if r is not None:
            # capped run: the allocator could not use more than 80 GB, so running at all is the proof; uncapped:
            # judged from the measured peak against 80 GB
            cap = r.get("memory_cap_gib")
            fits = bool(r["ok"]) and r.get("peak_gib") is not None and r["peak_gib"] <= (cap or EIGHTY_GB_GIB)
            how = (f"under a {cap:.1f} GiB cap (80 GB) on this card" if cap else
                   f"uncapped, peak judged against 80 GB = {EIGHTY_GB_GIB:.1f} GiB")
            out.append(Target.exact(f"{shape} shape: INT8 feed-forward ({mode}) + FA2 reaches {long_len} tokens within "
                                    "an 80 GB GPU's memory",
                                    f"ok, peak {r.get('peak_gib') or float('nan'):.1f} GiB {how}" if r["ok"]
                                    else ("out of memory " + how if r["oom"] else f"failed: {r.get('error')}"), fits))
    return out or [Target.not_measured("(none measured in this run)", "")]


def latency_effect(rows: list[dict], shape_rows: list[dict] | None = None) -> list[dict]:
    """INT8 variant / bf16 ratios of prefill latency and decode speed (>1 latency ratio = INT8 is slower)."""
    out = []
    by = {r["variant"]: r for r in rows if "ppl" in r}
    base = by.get("base")
    for name, r in by.items() if base is not None else ():
        if r["method"] == "float":
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
        b = ref.get((r["kind"], r.get("seq_len")))
        if r["mode"] == "bf16" or not r.get("ok") or b is None:
            continue
        if r["kind"] == "prefill":
            out.append({"model": r["model"], "variant": r["variant"], "what": f"prefill {r['seq_len']} tokens",
                        "int8 / float": r["latency_ms"] / b["latency_ms"]})
        elif r["kind"] == "decode":
            out.append({"model": r["model"], "variant": r["variant"], "what": "decode time per token",
                        "int8 / float": b["decode_tok_s"] / r["decode_tok_s"]})
    return out
