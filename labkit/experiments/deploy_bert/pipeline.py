"""The QAT BERT deployed on a CPU (notebook 01b): the trained pair, the accuracy of every deployed variant, the
interleaved latency table, and where INT8 inference spends its time (torch.profiler and ORT's profiler)."""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from labkit.experiments.qat_bert.pipeline import compile_settings, latency_inputs
from labkit.measure.timing import interleaved_latency

TORCH_VARIANTS = ("torch-fp32", "torch-fp32-compiled", "torchao-int8", "torchao-int8-compiled")
LABELS = {
    "torch-fp32": "PyTorch FP32 eager", "torch-fp32-compiled": "PyTorch FP32 compiled (freezing)",
    "torchao-int8": "torchao INT8 eager (QAT)", "torchao-int8-compiled": "torchao INT8 compiled (freezing, QAT)",
    "ort-fp32": "ONNX Runtime FP32 (BERT fusions)",
    "ort-qat-int8": "ONNX Runtime INT8, QAT grid (LayerNorm/GELU fusions)",
    "ort-qat-int8-mha": "ONNX Runtime INT8, QAT grid (+ MultiHeadAttention fusion)",
    "ort-qat-int8-unfused": "ONNX Runtime INT8, QAT grid (no BERT fusions)",
    "ort-qat-int8-exact": "ONNX Runtime INT8, QAT grid (exact rewrites: the unfused logits bit for bit, fewer kernels)",
    "ort-peer-int8": "ONNX Runtime quantize_dynamic PTQ (peer, default session)",
}
ARTIFACT_OF = {"ort-fp32": "fp32", "ort-qat-int8": "qat-int8", "ort-qat-int8-mha": "qat-int8-mha",
               "ort-qat-int8-unfused": "qat-int8-unfused", "ort-qat-int8-exact": "qat-int8-exact",
               "ort-peer-int8": "peer"}
ORT_VARIANTS = tuple(ARTIFACT_OF)
INT8_DEPLOY = ("torchao-int8-compiled", "ort-qat-int8", "ort-qat-int8-mha", "ort-qat-int8-unfused",
               "ort-qat-int8-exact")
PEER = "ort-peer-int8"  # ORT's quantize_dynamic, run with ORT's default session options (threads set)
PAD_TO = 128  # every eval batch padded to one shape: the compiled model runs one graph, every variant the same input


def ort_paths(artifacts: dict[str, dict]) -> dict[str, str]:
    """{ORT variant: its ONNX file} from `labkit.deploy.onnx_runtime.build_artifacts`'s artifacts."""
    return {v: artifacts[a]["path"] for v, a in ARTIFACT_OF.items()}


def _classifier(name: str, path: str, threads: int):
    from labkit.deploy.onnx_runtime import OnnxClassifier

    return OnnxClassifier(path, threads=threads, default_options=name == PEER)


def cpu_flags() -> dict:
    """The CPU's INT8-relevant instruction sets, from /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
    return {f: f in flags for f in wanted}


# ---------------------------------------------------------------------------------------------------------------
# the trained pair: notebook 01's recipe, or a `bench qat` run's saved models


def _saved_model_files(run_dir: str | Path, seed: int) -> dict[str, Path]:
    from labkit.experiments.qat_bert.saved_models import stage_files

    return {s: stage_files(run_dir, seed, s)[1] for s in ("fp32", "qat")}


def check_models_from(run_dir: str | Path, seeds, model: str) -> None:
    """Refuse, before any work, a --models-from folder that lacks a seed's FP32 or QAT model, or holds another
    model's; the message names the argument, the value and the fix."""
    import json

    if not Path(run_dir).exists():
        raise ValueError(f"--models-from {run_dir}: no such folder; give the run folder of a `bench qat` run that "
                         "saved its models (runs/qat_bert_<device>_<time>/)")
    for seed in seeds:
        for stage, path in _saved_model_files(run_dir, seed).items():
            if not path.is_file():
                raise ValueError(f"--models-from {run_dir}: no saved {stage!r} model of seed {seed} ({path} is "
                                 "missing); run `bench qat` with these seeds there, or choose --seeds it saved")
            described = json.loads(path.read_text(encoding="utf-8"))
            if described.get("model") not in (None, model):
                raise ValueError(f"--models-from {run_dir}: seed {seed} holds {described['model']!r}, not --model "
                                 f"{model!r}; pass --model {described['model']}")
            dataset = described.get("info", {}).get("training", {}).get("dataset")
            if dataset not in (None, "sst2"):
                raise ValueError(f"--models-from {run_dir}: seed {seed} was trained on {dataset!r}; deploy evaluates "
                                 "on SST-2: give a `bench qat --dataset sst2` run")


def load_models(run_dir: str | Path, seed: int, model: str) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(fp32, converted QAT INT8, training info) of `seed` saved by `bench qat` in `run_dir`."""
    from labkit.experiments.qat_bert.saved_models import load_trained, trained_info
    from labkit.models import load_classifier
    from labkit.quant.qat import convert_qat

    def fresh():
        return load_classifier(model, num_labels=2, device="cpu")[0]

    fp32 = load_trained(run_dir, seed, "fp32", fresh())
    qat = convert_qat(load_trained(run_dir, seed, "qat", fresh()))
    info = {s: trained_info(run_dir, seed, s).get("info", {}) for s in ("fp32", "qat")}
    return fp32.eval(), qat.eval(), {**info, "from": str(run_dir)}


def train_models(cfg, models_from: str | Path | None = None) -> dict:
    """FP32 fine-tune then QAT for `cfg.seed` (a QATBertConfig: notebook 01's pipeline and budget, epochs resolved
    against the training rows as `bench qat` does), or the same two models loaded from a `bench qat` run folder.
    Returns the models (on the CPU), the tokenizer, the eval set and what was trained."""
    from labkit.experiments.qat_bert.pipeline import load_data, make_qat, train
    from labkit.models import load_classifier

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    fp32, tokenizer = load_classifier(cfg.model, num_labels=2, device="cpu")
    train_ds, eval_ds = load_data(cfg, tokenizer)
    if models_from is not None:
        fp32, qat, info = load_models(models_from, cfg.seed, cfg.model)
        return {"fp32": fp32, "qat": qat, "tokenizer": tokenizer, "eval_ds": eval_ds,
                "info": {**info, "n_eval": len(eval_ds), "load_s": round(time.perf_counter() - t0, 1)}}
    cfg = replace(cfg, **dict(zip(("fp32_steps", "extra_steps"), cfg.steps_for(len(train_ds)))))
    fp32_info = train(fp32, train_ds, tokenizer, cfg, cfg.fp32_steps, cfg.lr, "fp32")
    t1 = time.perf_counter()
    qat, qat_info = make_qat(fp32, cfg, train_ds, tokenizer)
    qat_info["steps"] += cfg.fp32_steps
    info = {"fp32": fp32_info, "qat": qat_info, "fp32_s": round(t1 - t0, 1),
            "qat_s": round(time.perf_counter() - t1, 1), "n_train": len(train_ds), "n_eval": len(eval_ds)}
    return {"fp32": fp32.eval(), "qat": qat.eval(), "tokenizer": tokenizer, "eval_ds": eval_ds, "info": info}


def timing_models(cfg) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(fp32, QAT INT8) for timing only: the pretrained checkpoint and its QAT conversion without training. Same
    layers, shapes, INT8 kernels and fusions as a trained pair; CPU kernel time does not depend on the weights."""
    from labkit.models import load_classifier
    from labkit.quant.qat import convert_qat, prepare_qat

    fp32 = load_classifier(cfg.model, num_labels=2, device="cpu")[0].eval()
    qat = prepare_qat(copy.deepcopy(fp32).train(), cfg.layers, activations=cfg.activations, embeddings=cfg.embeddings)
    return fp32, convert_qat(qat.eval()).eval()


# ---------------------------------------------------------------------------------------------------------------
# accuracy of every variant, and the sentences each labels differently from torchao eager


def label_agreement(predictions: dict[str, list[int]], reference: str = "torchao-int8") -> dict[str, int]:
    """How many sentences each variant labels differently from `reference` (same eval set, same order)."""
    ref = predictions[reference]
    return {name: sum(a != b for a, b in zip(p, ref, strict=True)) for name, p in predictions.items()}


def seed_accuracy(fp32, qat, eval_ds, tokenizer, *, compiled: bool = True, threads: int | None = None) -> dict:
    """Accuracy/F1 of every variant of one seed's models, the sentences each labels differently from torchao
    eager, the artifacts' sizes and the bit-for-bit weight check. Two correct INT8 runtimes of the same QAT
    model differ on a few sentences: float summation order differs, a one-ulp change on a rounding boundary
    flips an INT8 code and deeper layers amplify it; torchao compiled vs eager measures that floor."""
    from labkit.deploy.onnx_export import verify_int8_weights
    from labkit.deploy.onnx_runtime import build_artifacts, evaluate
    from labkit.quant.size import size_on_disk_mb

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    runs: dict[str, dict] = {}

    def run(name, model):
        runs[name] = evaluate(model, eval_ds, tokenizer, pad_to=PAD_TO, return_predictions=True)
        print(f"    {name}: accuracy {runs[name]['accuracy'] * 100:.2f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        arts = build_artifacts(fp32, qat, tmp)
        out = {"artifacts": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in arts.items()},
               "sizes_mb": {"torch-fp32": size_on_disk_mb(fp32), "torchao-int8": size_on_disk_mb(qat),
                            **{k: v["size_mb"] for k, v in arts.items()}},
               "weights_check": verify_int8_weights(arts["qat-int8"]["path"], qat)}
        run("torch-fp32", fp32)
        run("torchao-int8", qat)
        if compiled:
            with torch.inference_mode(), compile_settings():
                torch._dynamo.reset()
                run("torchao-int8-compiled", torch.compile(qat))
                torch._dynamo.reset()
        for name, path in ort_paths(arts).items():
            run(name, _classifier(name, path, threads))
    predictions = {name: r.pop("predictions") for name, r in runs.items()}
    out.update(n_eval=len(eval_ds), padding=f"every eval batch padded to {PAD_TO} tokens",
               accuracy={name: {"accuracy": r["accuracy"], "f1": r["f1"]} for name, r in runs.items()},
               differ_from_torchao_eager=label_agreement(predictions))
    return out


# ---------------------------------------------------------------------------------------------------------------
# latency, and where the time goes


def latency_table(models: dict, artifacts: dict, threads: int, batch_sizes, seq_len: int, vocab: int,
                  rounds: int, repeat: int, warmup: int, compiled: bool = True) -> list[dict]:
    """p10/p50/p90 latency of every variant at `threads`, rounds interleaved across variants.

    models: {"torch-fp32": model, "torchao-int8": model}; compiled variants are added from them when
    `compiled`; artifacts: {"ort-...": path}. Returns one row per (variant, batch)."""
    torch.set_num_threads(threads)
    inputs = {b: latency_inputs(b, seq_len, vocab) for b in batch_sizes}
    fns = {}
    with contextlib.ExitStack() as stack, torch.inference_mode():
        if compiled:
            torch._dynamo.reset()
            stack.enter_context(compile_settings())
        for name, model in models.items():
            fns[name] = lambda x, m=model: m(**x)
            if compiled:
                fns[name + "-compiled"] = lambda x, f=torch.compile(model): f(**x)
        for name, path in artifacts.items():
            clf = _classifier(name, path, threads)
            feeds = {b: clf.feeds(x) for b, x in inputs.items()}
            fns[name] = lambda x, c=clf, f=feeds: c.run(f[x["input_ids"].shape[0]])
        times = interleaved_latency(fns, inputs, rounds=rounds, repeat=repeat, warmup=warmup)
    if compiled:
        torch._dynamo.reset()
    return [{"variant": name, "label": LABELS.get(name, name), "threads": threads, "batch": b, "seq_len": seq_len,
             **{k: t[k] for k in ("p10_ms", "p50_ms", "p90_ms", "n")}, "rounds": rounds, "repeat": repeat,
             "warmup_s": round(t["warmup_s"], 2)} for name, per_b in times.items() for b, t in per_b.items()]


def profile_int8(model, batch: int, seq_len: int, vocab: int, top: int = 12,
                 modes: tuple[str, ...] = ("eager", "compiled")) -> dict:
    """torch.profiler self-CPU time by op of the torchao INT8 model, eager vs compiled (freezing), one call each
    after warm-up: eager runs quantize / int-matmul / dequantize as separate ops, compiled runs fused kernels."""
    from torch.profiler import ProfilerActivity, profile

    unknown = set(modes) - {"eager", "compiled"}
    if unknown:
        raise ValueError(f"modes {sorted(unknown)} are not profiling modes; use 'eager' and/or 'compiled'")
    x = latency_inputs(batch, seq_len, vocab)
    out = {}
    with torch.inference_mode(), compile_settings():
        torch._dynamo.reset()
        for mode in modes:
            fn = model if mode == "eager" else torch.compile(model)
            for _ in range(2):
                fn(**x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn(**x)
            events = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0),
                            key=lambda e: -e.self_cpu_time_total)
            out[mode] = {"total_ms": sum(e.self_cpu_time_total for e in events) / 1e3,
                         "n_ops": sum(e.count for e in events), "distinct_ops": len(events),
                         "top": [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3}
                                 for e in events[:top]]}
    torch._dynamo.reset()
    return out


ORT_OP_GROUPS = {
    "integer GEMMs": ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger"),
    "activation quantization": ("ReduceMax", "ReduceMin", "Neg", "Max", "Div", "Reciprocal", "QuantizeLinear",
                                "DynamicQuantizeLinear"),
    "Mul (rescale)": ("Mul",),
    "attention (float)": ("MultiHeadAttention", "Attention", "Softmax", "FusedMatMul", "MatMul", "Transpose"),
    "LayerNorm, GELU, adds": ("LayerNormalization", "SkipLayerNormalization", "Gelu", "BiasGelu", "FastGelu", "Add"),
}
"""Operator types by what they do in the BERT graphs; the peer's DynamicQuantizeMatMul quantizes its input inside
the GEMM kernel, so its quantization shows under "integer GEMMs"."""
PROFILED_ORT = ("ort-qat-int8-exact", "ort-qat-int8-unfused", PEER)  # what the bench profiles


def profile_ort(paths: dict[str, str], batch: int, seq_len: int, vocab: int, threads: int = 1, runs: int = 3) -> dict:
    """ORT's profiler on each ONNX file of `paths` ({variant: path}; the peer with ORT's default session options,
    as in the latency table): ms per run by op group and by op type, on one full-length batch."""
    from labkit.deploy.onnx_runtime import op_times

    out = {}
    for name, path in paths.items():
        feeds = _classifier(name, path, threads).feeds(latency_inputs(batch, seq_len, vocab))
        ops = op_times(path, feeds, runs=runs, threads=threads, default_options=name == PEER)
        groups = {g: 0.0 for g in [*ORT_OP_GROUPS, "other"]}
        for op, row in ops.items():
            groups[next((g for g, names in ORT_OP_GROUPS.items() if op in names), "other")] += row["ms"]
        out[name] = {"total_ms": sum(groups.values()), "groups": groups, "ops": ops, "batch": batch,
                     "seq_len": seq_len, "threads": threads, "runs": runs}
    return out
