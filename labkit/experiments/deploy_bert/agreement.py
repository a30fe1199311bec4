"""The accuracy stage of one seed: export the artifacts, then accuracy, F1 and per-sentence label agreement of
every variant on the eval set, torchao eager as the reference and torchao compiled as the noise floor."""

from __future__ import annotations

import os
import tempfile

import torch

from labkit.experiments.deploy_bert.options import ARTIFACT_OF

PAD_TO = 128  # every eval batch padded to one shape: the compiled model runs one graph, every variant the same input
ACCURACY_VARIANTS = ("torch-fp32", "torchao-int8", "torchao-int8-compiled", "ort-fp32", "ort-qat-int8",
                     "ort-qat-int8-mha", "ort-qat-int8-unfused", "ort-qat-int8-exact", "ort-peer-int8")


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
    from labkit.deploy.onnx_runtime import OnnxClassifier, build_artifacts, evaluate
    from labkit.experiments.qat_bert.latency import compile_settings
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
        for name in ACCURACY_VARIANTS:
            if name in ARTIFACT_OF:
                run(name, OnnxClassifier(arts[ARTIFACT_OF[name]]["path"], threads=threads,
                                         default_options=name == "ort-peer-int8"))
    predictions = {name: r.pop("predictions") for name, r in runs.items()}
    out.update(n_eval=len(eval_ds), padding=f"every eval batch padded to {PAD_TO} tokens",
               accuracy={name: {"accuracy": r["accuracy"], "f1": r["f1"]} for name, r in runs.items()},
               differ_from_torchao_eager=label_agreement(predictions))
    return out
