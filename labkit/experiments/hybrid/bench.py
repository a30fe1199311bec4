"""`python -m labkit.bench hybrid`: FA2 attention + 8-bit selected layers against bf16, measured (notebook 03).

Two parts, each optional:
  1. the trained model (`--model`, default the embedded SmolLM2-135M): per-layer sensitivity (once), then the
     variants base / base-ft / ptq-* / ft-ptq-* / qat-* in INT8 w8 and w8a8 and FP8 row-wise, and qat-w8-labkit
     (qat-w8's codes on labkit's INT8 kernel Linear), of the selected layers (default: the feed-forward layers),
     each with perplexity on WikiText-2 test (w8a8 on a GPU through an exact float32 emulation of the INT8
     arithmetic, checked against the converted model on one batch: labkit.experiments.hybrid.evaluate), weight
     size, the after-conversion checks (attention kernel, 8-bit == selection, rest untouched) and, once per kind
     of kernels, prefill latency, peak memory and decode tokens/s; the fine-tuned variants again for every seed;
  2. the llama-2-7b shape with random weights (GPU only; speed and memory only, once): bf16 + FA2 against 8-bit
     feed-forward + FA2 at 8k and 32k tokens, and decode.
`--model none` skips part 1 (e.g. when the embedded model is not on the machine); `--shape none` skips part 2.

Profiles: full on a GPU (the real experiment: every variant, 3 seeds; estimated from the H200 file's timings at
10-11 minutes: loading and sensitivity ~0.5, seed 0 ~4 (fine-tuning base-ft, qat-w8, qat-w8a8 and qat-fp8 ~1.8),
seeds 1 and 2 ~2.2 each (the fine-tuned variants, perplexity only), the llama-2-7b shape part ~1.5-2; one
`--resume` finishes it if a time limit stops the first attempt); full on a CPU (reduced: shorter blocks, fewer steps, no
weight-only QAT, sensitivity on 4 blocks; about 15-25 minutes on 2 busy cores); quick (a smoke run, ~3 minutes
on 2 cores). A run writes its folder runs/hybrid_<device>_<time>/ (or `--out`): result.json (status "running"
until the end) and result.jsonl with each finished measurement (sensitivity, each variant, each further seed,
each shape mode), so an interrupted run keeps what it measured and `--resume` with the same `--out` continues it.
`--update-reference` copies a complete full-profile run to data/reference/hybrid_<device>.json:

    python -m labkit.bench hybrid --profile full --out runs/hybrid_gpu/result.json --update-reference
    python -m labkit.bench hybrid --profile full --out runs/hybrid_gpu/result.json --update-reference --resume
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import replace

import torch

from labkit.env import get_profile, provenance
from labkit.experiments.hybrid.config import FEED_FORWARD, VARIANTS, HybridConfig, missing_parents, needed_variants
from labkit.experiments.hybrid.pipeline import run_hybrid
from labkit.experiments.hybrid.seeds import seed_variants
from labkit.experiments.hybrid.shape import SHAPE_MODES, shape_benchmark
from labkit.experiments.hybrid.targets import evaluate_targets, latency_effect
from labkit.lm.perplexity import wikitext_blocks
from labkit.measure.memory import GpuMemoryCap, error_text, release_memory
from labkit.models import SHAPES, UnknownModelError, load_causal_lm, meta_model
from labkit.quant.selection import EmptySelectionError, resolve_layers
from labkit.quant.sensitivity import describe_linears, layer_sensitivity
from labkit.results.files import command_line, device_slug
from labkit.results.run import Run, check_run_options, publish

SENSITIVITY_BLOCKS_CPU = (0, 10, 20, 29)  # full profile on a CPU
SENSITIVITY_BLOCKS_QUICK = (0, 29)
LAYER_PRESETS = {"feed-forward": FEED_FORWARD, "all-linear": r"\.layers\.\d+\."}


def _layers(text: str):
    return LAYER_PRESETS.get(text, text)


def _check_layers(model, pattern: str, what: str) -> None:
    try:
        resolve_layers(model, _layers(pattern))
    except (EmptySelectionError, re.error) as err:
        example = next((n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)), "")
        raise ValueError(f"--layers {pattern!r} selects no Linear layer of {what} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); use 'feed-forward', 'all-linear' or a regular expression "
                         f"on module names such as {example!r}") from None


def check(args) -> None:
    """Every argument, before any model loads: model and shape (configs only), layer pattern (resolved on a
    weightless copy), variants, lengths against the model's context, run files. Sets args.cfg, args.device."""
    profile = args.profile or get_profile()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = tuple(args.variants) if args.variants else None
    unknown = [v for v in variants or () if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants {','.join(variants)}: unknown variant {unknown[0]!r}; "
                         f"choose from {', '.join(VARIANTS)}")
    missing = missing_parents(variants or ())
    if missing:
        child, parent = missing[0]
        raise ValueError(f"--variants {','.join(variants)}: {child} starts from {parent}'s model; add {parent}")
    overrides = {k: v for k, v in {
        "train_steps": args.steps, "lr": args.lr, "seq_len": args.seq_len, "eval_blocks": args.eval_blocks,
        "prefill_lengths": args.prefill_lens, "variants": variants, "seeds": getattr(args, "seeds", None),
        "ppl_path": getattr(args, "ppl_path", None),
    }.items() if v is not None}
    if getattr(args, "memory_cap_gb", None) is not None and args.memory_cap_gb < 0:
        raise ValueError(f"--memory-cap-gb {args.memory_cap_gb}: give a size in GB above 0, or 0 for no cap")
    cfg = HybridConfig.for_profile(profile, device, model=args.model, layers=_layers(args.layers), **overrides)
    if args.model.lower() != "none":
        try:
            skeleton = meta_model(args.model, "causal_lm")
        except UnknownModelError as err:
            raise ValueError(f"--model {args.model!r}: {err} Or --model none to skip this part.") from None
        _check_layers(skeleton, args.layers, args.model)
        context = getattr(skeleton.config, "max_position_embeddings", None)
        longest = max(cfg.seq_len, *cfg.prefill_lengths)
        if context and longest > context and not args.allow_beyond_context:
            name = "--seq-len" if cfg.seq_len == longest else "--prefill-lens"
            raise ValueError(f"{name} {longest}: longer than {args.model}'s context of {context} tokens; use "
                             "shorter lengths or add --allow-beyond-context")
    if args.shape.lower() != "none":
        if args.shape not in SHAPES:
            raise ValueError(f"--shape {args.shape!r}: unknown shape; choose from {', '.join(SHAPES)} or none")
        bad = [m for m in args.shape_modes if m not in SHAPE_MODES]
        if bad:
            raise ValueError(f"--shape-modes {','.join(args.shape_modes)}: unknown mode {bad[0]!r}; "
                             f"choose from {', '.join(SHAPE_MODES)}")
        if device.type == "cuda":
            _check_layers(meta_model(args.shape, "any_causal_lm"), args.layers, f"the {args.shape} shape")
    check_run_options(args, "hybrid", device_slug(device), profile)
    args.cfg, args.device, args.profile_name = cfg, device, profile


def run(args) -> dict:
    """Run both parts into the run's files; returns the result (with its status)."""
    if not hasattr(args, "cfg"):
        check(args)
    cfg, device, profile = args.cfg, args.device, args.profile_name
    started = time.perf_counter()
    result: dict = {
        "provenance": provenance(command_line(getattr(args, "argv", None)), profile), "experiment": "hybrid",
        "profile": profile, "config": cfg.as_dict(), "meta": {}, "selected": [], "rows": [], "checks": {},
        "losses": {}, "sensitivity": None, "shape_rows": [], "targets": [], "latency_effect": [], "errors": [],
        "seed_rows": {}, "memory_cap": None,
        "notes": [
            "perplexity: WikiText-2 test; fine-tuning (base-ft and QAT, same recipe): WikiText-2 validation",
            "attention: FlashAttention-2 (SDPA forced to the flash kernel) on a GPU; PyTorch SDPA on a CPU",
            "size_mb: bytes of every distinct weight (INT8 codes + scales), tied weights once",
            "peak_gib: GPU torch.cuda.max_memory_allocated with one model on the GPU; CPU: process peak RSS",
            f"{args.shape}: random weights, speed and memory only",
        ],
    }
    run_ = Run(result, *args.paths, resume=args.resume)

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        runs = list(result["seed_rows"].values()) or None
        result["targets"] = evaluate_targets(result["rows"], result["shape_rows"], runs=runs)
        result["latency_effect"] = latency_effect(result["rows"], result["shape_rows"])
        run_.save()

    def record(kind: str, item: dict) -> None:
        save()
        run_.record(kind, item)

    def stage(msg: str) -> None:
        print(f"[hybrid {time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    def failed(part: str, err: BaseException | str) -> None:
        text = err if isinstance(err, str) else error_text(err)
        result["errors"].append({"stage": part, "error": text})
        run_.fail(f"{part}: {text}")
        stage(f"{part} FAILED: {text}")

    with run_:
        stage(f"profile {profile} on {device}; writing {run_.json_path}")
        if args.model.lower() != "none":
            _trained_part(cfg, args, result, run_, record, stage, failed)
        if args.shape.lower() != "none":
            if device.type != "cuda":
                result["notes"].append(f"{args.shape} shape part skipped: it needs an NVIDIA GPU (FA2, ~14 GB of "
                                       "weights)")
                stage(f"{args.shape} part skipped: no CUDA GPU here")
            else:
                done = run_.recorded("shape")
                result["shape_rows"] = list(done)
                finished = {r["mode"] for r in done if r.get("kind") == "decode"}
                modes = tuple(m for m in args.shape_modes if m not in finished)
                result["shape_rows"] = [r for r in done if r["mode"] in finished]
                stage(f"{args.shape} shape (random weights): speed and memory")
                try:
                    cap = GpuMemoryCap(args.memory_cap_gb * 1e9 if args.memory_cap_gb else None, device)
                    with cap:
                        result["memory_cap"] = cap.as_dict()
                        if cap.fraction is not None:
                            stage(f"GPU memory capped at {args.memory_cap_gb:g} GB ({cap.as_dict()['cap_gib']:.1f} "
                                  f"GiB, {cap.fraction:.3f} of this card)")

                        def on_shape_row(row: dict) -> None:
                            row = {**row, "memory_cap_gib": cap.as_dict()["cap_gib"] if cap.fraction else None}
                            result["shape_rows"].append(row)
                            record("shape", row)

                        if modes:
                            shape_benchmark(args.shape, tuple(args.shape_lens), _layers(args.layers), modes,
                                            device=device, log=stage, on_row=on_shape_row)
                except Exception as err:  # noqa: BLE001 - recorded; the file keeps what was measured
                    failed("shape", err)
                for bad in sorted({f"{r['variant']}: {r.get('matmul')}" for r in result["shape_rows"]
                                   if r.get("matmul_ok") is False}):
                    run_.fail(f"integer kernel check: {bad}")
        save()
    stage(f"{run_.status}. Targets:")
    for t in result["targets"]:
        print(f"  {t.get('verdict', 'n/a'):<12} {t['target']}: {t['measured']}", flush=True)
    publish(run_, args, "hybrid", device_slug(device))
    return result


def _trained_part(cfg, args, result: dict, run_: Run, record, stage, failed) -> None:
    """Load the trained model, sensitivity table, then every variant (each recorded as it finishes)."""
    stage(f"loading {cfg.model}")
    try:
        model, tokenizer = load_causal_lm(cfg.model, dtype=torch.float32, device="cpu")
    except Exception as err:  # noqa: BLE001 - e.g. the embedded model is not installed on the GPU machine
        failed("load", f"--model {cfg.model} could not be loaded: {error_text(err)}")
        return
    if not args.no_sensitivity:
        earlier = run_.recorded("sensitivity")
        try:
            if earlier:
                result["sensitivity"] = earlier[-1]
            else:
                stage("per-layer sensitivity (one layer quantized at a time)")
                result["sensitivity"] = _sensitivity(model, tokenizer, cfg, result["profile"])
                record("sensitivity", result["sensitivity"])
        except Exception as err:  # noqa: BLE001
            failed("sensitivity", err)
    done = {r["row"]["variant"]: r for r in run_.recorded("variant") if "error" not in r["row"]}
    # the variants that start from another one's model (ft-ptq-* from base-ft, qat-w8-labkit from qat-w8) need it
    # made again (same seed, same recipe)
    todo = needed_variants(v for v in cfg.variants if v not in done)
    kept = {name: item for name, item in done.items() if name not in todo}

    def collect(extra_rows: list[dict], res=None) -> None:
        rows = {name: item["row"] for name, item in kept.items()} | {r["variant"]: r for r in extra_rows}
        result["rows"] = [rows[v] for v in VARIANTS if v in rows]
        result["checks"] = {n: i["checks"] for n, i in kept.items() if i.get("checks")}
        result["losses"] = {n: i["losses"] for n, i in kept.items() if i.get("losses")}
        if res is not None:
            result.update(meta=res.meta, selected=res.selected)
            result["checks"].update(res.checks)
            result["losses"].update(res.losses)

    collect([])
    if kept:
        stage(f"resume: {', '.join(kept)} already measured")
    if todo:
        stage(f"variants {', '.join(todo)}")

        def on_row(row, res) -> None:
            collect(res.rows, res)
            record("variant", {"row": row, "checks": res.checks.get(row["variant"]),
                               "losses": res.losses.get(row["variant"])})

        try:
            res = run_hybrid(replace(cfg, variants=tuple(todo)), model, tokenizer, on_row=on_row, progress=False,
                             log=lambda s: stage(s.strip()))
            collect(res.rows, res)
        except Exception as err:  # noqa: BLE001
            failed("variants", err)
    bad = [r for r in result["rows"] if "error" in r]
    if bad:
        run_.fail(f"{len(bad)} of {len(result['rows'])} variants failed ("
                  + "; ".join(f"{r['variant']}: {r['error']}" for r in bad)[:400] + ")")
    unchecked = [r["variant"] for r in result["rows"] if r.get("checks_ok") is False]
    if unchecked:
        run_.fail(f"after-conversion checks failed (attention kernel, integer matmul, INT8 layers or untouched "
                  f"rest): {', '.join(unchecked)}; see checks")
    if len(cfg.seeds) > 1:  # the variants that worked on the first seed (a failed one is already a failed run)
        good = tuple(needed_variants(r["variant"] for r in result["rows"] if "error" not in r))
        if good:
            _more_seeds(replace(cfg, variants=good), model, tokenizer, result, run_, record, stage, failed)
    del model
    release_memory()


def _more_seeds(cfg, model, tokenizer, result: dict, run_: Run, record, stage, failed) -> None:
    """The seed-dependent variants (fine-tuned) again for every further seed, perplexity only (no speed); seeds an
    earlier attempt finished are reused. Fills result["seed_rows"] with every seed's comparable rows."""
    trained = seed_variants(cfg.variants)
    first = cfg.seeds[0]
    fixed = [r for r in result["rows"] if r["variant"] not in trained]
    seed_rows = {str(first): list(result["rows"])}
    # a seed whose rows hold a failed variant is measured again on --resume (earlier code recorded such seeds)
    earlier = {r["seed"]: r["rows"] for r in run_.recorded("seed") if not _failed_rows(r["rows"])}
    for seed in cfg.seeds[1:]:
        if not trained:
            break
        if seed in earlier:
            rows = earlier[seed]
            stage(f"resume: seed {seed} already measured")
        else:
            stage(f"seed {seed}: {', '.join(trained)} (perplexity only)")
            try:
                res = run_hybrid(replace(cfg, seed=seed, speed=False, variants=trained), model, tokenizer,
                                 progress=False, log=lambda s: stage(s.strip()))
            except Exception as err:  # noqa: BLE001
                failed(f"seed {seed}", err)
                continue
            rows = res.rows
            record("seed", {"seed": seed, "rows": rows})
        bad = _failed_rows(rows)
        if bad:  # the run is not complete: its targets would rest on fewer seeds than asked for
            run_.fail(f"seed {seed}: {len(bad)} variant(s) failed ("
                      + "; ".join(f"{r['variant']}: {r.get('error', 'after-conversion checks failed')}"
                                  for r in bad)[:400] + "); --resume measures this seed again")
        seed_rows[str(seed)] = rows + fixed
        result["seed_rows"] = dict(seed_rows)


def _failed_rows(rows: list[dict]) -> list[dict]:
    """The rows of variants that failed (an error, or their after-conversion checks)."""
    return [r for r in rows if "error" in r or r.get("checks_ok") is False]


def _sensitivity(model, tokenizer, cfg, profile: str) -> dict:
    """Sensitivity of every Linear (GPU) or of a few blocks (CPU) on calibration blocks of WikiText-2 validation."""
    device = torch.device(cfg.device)
    gpu = device.type == "cuda"
    work = copy.deepcopy(model).to(device=device, dtype=cfg.torch_dtype())
    quick = profile == "quick"
    n_batches, seq = (4, 512) if gpu else ((1, 128) if quick else (2, min(cfg.seq_len, 256)))
    batches = wikitext_blocks(tokenizer, "validation", seq, n_batches, cfg.data_dir)
    layers = None
    if not gpu:
        info = describe_linears(work)
        keep = info["block"].isin(SENSITIVITY_BLOCKS_QUICK if quick else SENSITIVITY_BLOCKS_CPU) | info["block"].isna()
        layers = list(info.loc[keep, "name"])
    table = layer_sensitivity(work, batches, layers, mode="w8a8", progress=False)
    del work
    release_memory(device)
    return {"attrs": dict(table.attrs), "rows": json.loads(table.to_json(orient="records"))}
