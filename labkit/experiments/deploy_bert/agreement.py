"""Label agreement between INT8 runtimes of the same QAT model, and `--agreement-only` to add it to a result file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from labkit.experiments.deploy_bert.training import _load_cached


def label_agreement(fp32, qat, int8_onnx: str | Path, eval_ds, tokenizer, threads: int = 1) -> dict:
    """How often two correct INT8 runtimes of the same QAT model agree on the eval set's labels: torchao eager vs
    ORT INT8, and torchao eager vs torchao compiled (freezing; batches padded to 128 for one compiled shape).
    Float summation order differs between runtimes; a one-ulp change on a rounding boundary flips an INT8 code
    and deeper layers amplify it, so a few near-boundary sentences can change label in either pair."""
    from labkit.deploy.onnx_runtime import OnnxClassifier, evaluate
    from labkit.experiments.qat_bert.latency import compile_settings

    torch.set_num_threads(threads)
    runs = {"torchao-int8": evaluate(qat, eval_ds, tokenizer, pad_to=128, return_predictions=True),
            "ort-qat-int8": evaluate(OnnxClassifier(int8_onnx, threads=threads), eval_ds, tokenizer, pad_to=128,
                                     return_predictions=True),
            "torch-fp32": evaluate(fp32, eval_ds, tokenizer, pad_to=128, return_predictions=True)}
    with torch.inference_mode(), compile_settings():
        torch._dynamo.reset()
        runs["torchao-int8-compiled"] = evaluate(torch.compile(qat), eval_ds, tokenizer, pad_to=128,
                                                 return_predictions=True)
        torch._dynamo.reset()
    ref = runs["torchao-int8"]["predictions"]
    out = {"n": len(ref), "padding": "every batch padded to 128 tokens", "accuracy": {}, "differ_from_torchao_eager": {}}
    for name, r in runs.items():
        out["accuracy"][name] = r["accuracy"]
        out["differ_from_torchao_eager"][name] = sum(a != b for a, b in zip(r["predictions"], ref, strict=True))
    return out


def _agreement_only(args, cfg, out: Path, command: str) -> dict:
    """Add `label_agreement` of the cached models to the existing result file `out`, with its own provenance."""
    import json

    from labkit.results.files import write_json
    from labkit.deploy.onnx_export import export_qat_int8
    from labkit.env import provenance

    if not args.cache_dir or not out.is_file():
        raise ValueError(f"--agreement-only needs --cache-dir with the trained models and an existing result file "
                         f"({out} {'exists' if out.is_file() else 'is missing'}); run the full experiment first")
    data = json.loads(out.read_text(encoding="utf-8"))
    cached = _load_cached(cfg, Path(args.cache_dir))
    if cached is None:
        raise ValueError(f"no trained models for this budget in {args.cache_dir}; run the experiment with --cache-dir")
    fp32, qat, _ = cached
    from labkit.models import load_classifier
    from labkit.experiments.qat_bert.pipeline import load_data

    tokenizer = load_classifier(cfg.model, num_labels=2, device="cpu")[1]
    _, eval_ds = load_data(cfg, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_qat_int8(qat, Path(tmp) / "qat_int8.onnx", fusions="no-attention")["path"]
        data["agreement"] = {"provenance": provenance(command), **label_agreement(fp32, qat, path, eval_ds, tokenizer)}
    write_json(out, data)
    print(json.dumps(data["agreement"]["differ_from_torchao_eager"]), data["agreement"]["accuracy"])
    return data
