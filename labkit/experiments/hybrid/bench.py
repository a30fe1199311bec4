"""`python -m labkit.bench hybrid`: FA2 attention + INT8 selected layers against bf16, measured (notebook 03).

Two parts, each optional:
  1. the trained model (`--model`, default the embedded SmolLM2-135M): per-layer sensitivity, then the
     variants base / base-ft / ptq-w8(a8) / ft-ptq-w8(a8) / qat-w8(a8) of the selected layers (default: the
     feed-forward layers), each with perplexity on WikiText-2 test, weight size, prefill latency and peak memory,
     decode tokens/s, and the after-conversion checks (attention kernel, INT8 == selection, rest untouched);
  2. the llama-2-7b shape with random weights (GPU only; speed and memory only): bf16 + FA2 against INT8
     feed-forward (weight-only and dynamic activations) + FA2 at 8k and 32k tokens, and decode.
`--model none` skips part 1 (e.g. when the embedded model is not on the machine); `--shape none` skips part 2.

Profiles: full on a GPU (the real experiment, a few minutes on an H100); full on a CPU (reduced: shorter
blocks, fewer steps, no weight-only QAT, sensitivity on 4 blocks; about 15-25 minutes on 2 busy cores);
quick (a smoke run, ~3 minutes on 2 cores). The result file data/reference/hybrid_<device>.json is rewritten
after every measurement (status "running" until the end), so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import copy
import json
import time
import traceback
from pathlib import Path

import torch

from labkit.env import get_profile, provenance
from labkit.experiments.hybrid.config import FEED_FORWARD, HybridConfig
from labkit.experiments.hybrid.pipeline import run_hybrid
from labkit.experiments.hybrid.shape import shape_benchmark
from labkit.experiments.hybrid.targets import evaluate_targets, latency_effect
from labkit.lm.perplexity import wikitext_blocks
from labkit.measure.memory import release_memory
from labkit.models import load_causal_lm
from labkit.quant.sensitivity import describe_linears, layer_sensitivity
from labkit.results.files import command_line, default_out, write_json

SENSITIVITY_BLOCKS_CPU = (0, 10, 20, 29)  # full profile on a CPU
SENSITIVITY_BLOCKS_QUICK = (0, 29)


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="trained causal LM (embedded name or hub id/folder); 'none' skips this part")
    parser.add_argument("--layers", default="feed-forward",
                        help="layers to quantize: 'feed-forward' (gate/up/down, the default), 'all-linear' (every "
                             "Linear in the blocks; the head stays float, it is tied to the embedding on SmolLM2), "
                             "or a regular expression on module names")
    parser.add_argument("--variants", default=None, help="comma-separated subset of base,base-ft,ptq-w8,ptq-w8a8,"
                        "ft-ptq-w8,ft-ptq-w8a8,qat-w8,qat-w8a8 (default: by profile)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tune steps (base-ft and QAT alike)")
    parser.add_argument("--lr", type=float, default=None, help="fine-tune learning rate")
    parser.add_argument("--seq-len", type=int, default=None, help="block length for perplexity and fine-tuning")
    parser.add_argument("--eval-blocks", type=int, default=None,
                        help="test blocks for perplexity (default: by profile)")
    parser.add_argument("--prefill-lens", default=None, help="comma-separated prefill lengths (trained model)")
    parser.add_argument("--no-sensitivity", action="store_true", help="skip the per-layer sensitivity table")
    parser.add_argument("--shape", default="llama-2-7b",
                        help="random-weight shape for the speed/memory part (GPU only); 'none' skips it")
    parser.add_argument("--shape-lens", default="8192,32768", help="comma-separated prefill lengths for the shape")
    parser.add_argument("--shape-modes", default="bf16,w8,w8a8",
                        help="comma-separated: bf16,w8,w8a8,w8-labkit (INT8 on labkit's Triton kernel),fp8 (FP8 "
                             "row-wise, GPUs >= 8.9)")


def _ints(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(x) for x in text.split(",") if x.strip()) if text else None


def _layers(text: str):
    return {"feed-forward": FEED_FORWARD, "all-linear": r"\.layers\.\d+\."}.get(text, text)


def run(args) -> dict:
    """Run both parts and write the result file; returns its content."""
    started = time.perf_counter()
    profile = args.profile or get_profile()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out) if args.out else default_out("hybrid", device)
    command = command_line(getattr(args, "argv", None))
    overrides = {k: v for k, v in {
        "train_steps": args.steps, "lr": args.lr, "seq_len": args.seq_len, "eval_blocks": args.eval_blocks,
        "prefill_lengths": _ints(args.prefill_lens),
        "variants": tuple(args.variants.split(",")) if args.variants else None,
    }.items() if v is not None}
    cfg = HybridConfig.for_profile(profile, device, model=args.model, layers=_layers(args.layers), **overrides)
    result: dict = {
        "provenance": provenance(command), "experiment": "hybrid", "status": "running", "profile": profile,
        "config": cfg.as_dict(), "meta": {}, "selected": [], "rows": [], "checks": {}, "losses": {},
        "sensitivity": None, "shape_rows": [], "targets": [], "latency_effect": [], "errors": [],
        "notes": [
            "perplexity: WikiText-2 test; fine-tuning (base-ft and QAT, same recipe): WikiText-2 validation",
            "attention: FlashAttention-2 (SDPA forced to the flash kernel) on a GPU; PyTorch SDPA on a CPU",
            "size_mb: bytes of every distinct weight (INT8 codes + scales), tied weights once",
            "peak_gib: GPU torch.cuda.max_memory_allocated with one model on the GPU; CPU: process peak RSS",
            f"{args.shape}: random weights, speed and memory only",
        ],
    }

    def save(status: str = "running") -> None:
        result["status"] = status
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        result["targets"] = evaluate_targets(result["rows"], result["shape_rows"])
        result["latency_effect"] = latency_effect(result["rows"], result["shape_rows"])
        write_json(out, result)

    def stage(msg: str) -> None:
        print(f"[hybrid {time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    stage(f"profile {profile} on {device}; writing {out}")
    save()
    if args.model.lower() != "none":
        _trained_part(cfg, args, result, save, stage)
    if args.shape.lower() != "none":
        if device.type != "cuda":
            result["notes"].append(f"{args.shape} shape part skipped: it needs an NVIDIA GPU (FA2, ~14 GB of weights)")
            stage(f"{args.shape} part skipped: no CUDA GPU here")
        else:
            stage(f"{args.shape} shape (random weights): speed and memory")
            try:
                shape_benchmark(args.shape, _ints(args.shape_lens), _layers(args.layers),
                                   tuple(args.shape_modes.split(",")), device=device,
                                   on_row=lambda row: (result["shape_rows"].append(row), save()),
                                   log=lambda s: stage(s))
            except Exception as err:  # noqa: BLE001 - recorded; the file keeps what was measured
                result["errors"].append({"stage": "shape", "error": f"{type(err).__name__}: {err}"})
                stage(f"shape part FAILED: {type(err).__name__}: {err}")
    save("complete")
    stage("done. Targets:")
    for t in result["targets"]:
        mark = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        print(f"  {mark} {t['target']}: {t['measured']}", flush=True)
    return result


def _trained_part(cfg, args, result: dict, save, stage) -> None:
    """Load the trained model, sensitivity table, then every variant (rows saved as they finish)."""
    stage(f"loading {cfg.model}")
    try:
        model, tokenizer = load_causal_lm(cfg.model, dtype=torch.float32, device="cpu")
    except Exception as err:  # noqa: BLE001 - e.g. the embedded model is not installed on the GPU machine
        result["errors"].append({"stage": "load", "error": f"{type(err).__name__}: {err}"})
        result["notes"].append(f"trained-model part skipped: {cfg.model} could not be loaded")
        stage(f"could not load {cfg.model} ({type(err).__name__}: {err}); skipping the trained-model part")
        save()
        return
    if not args.no_sensitivity:
        try:
            stage("per-layer sensitivity (one layer quantized at a time)")
            result["sensitivity"] = _sensitivity(model, tokenizer, cfg, result["profile"])
            save()
        except Exception as err:  # noqa: BLE001
            result["errors"].append({"stage": "sensitivity", "error": f"{type(err).__name__}: {err}"})
            stage(f"sensitivity FAILED: {type(err).__name__}: {err}")
    stage(f"variants {', '.join(cfg.variants)}")

    def on_row(row, res) -> None:
        result.update(meta=res.meta, selected=res.selected, rows=res.rows, checks=res.checks, losses=res.losses)
        save()

    try:
        run_hybrid(cfg, model, tokenizer, on_row=on_row, progress=False, log=lambda s: stage(s.strip()))
    except Exception as err:  # noqa: BLE001
        result["errors"].append({"stage": "variants", "error": f"{type(err).__name__}: {err}",
                                 "traceback": traceback.format_exc(limit=4)})
        stage(f"variants FAILED: {type(err).__name__}: {err}")
    del model
    release_memory()


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
