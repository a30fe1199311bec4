"""Run ONNX classifiers in ONNX Runtime on a CPU: sessions, predictions, accuracy, the artifacts' recipe.

`build_artifacts` writes the four files the deploy experiment compares (FP32 raw, FP32 fused, QAT INT8 on
torchao's grid, ORT's quantize_dynamic peer); `OnnxClassifier` runs one like a transformers model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from labkit.deploy.onnx_export import (
    INPUT_NAMES,
    DeployError,
    export_onnx,
    export_qat_int8,
    optimize_bert,
    quantize_dynamic_peer,
)

OPT_LEVELS = ("disable", "basic", "extended", "all")


def session_options(threads: int = 1, optimization: str = "all"):
    """ORT session options: `threads` intra-op threads, sequential execution, graph optimization level."""
    import onnxruntime as ort

    if optimization not in OPT_LEVELS:
        raise ValueError(f"optimization={optimization!r} is not a level; use one of {OPT_LEVELS}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    return so


def _options(threads: int, optimization: str, default_options: bool):
    """The lab's session options, or ORT's defaults with only the thread count set."""
    import onnxruntime as ort

    if not default_options:
        return session_options(threads, optimization)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return so


def _session(path: str | Path, so):
    """An InferenceSession on the CPU with these options (a missing file gets a clear error)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}; write one with labkit.deploy.onnx_export first")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def make_session(path: str | Path, threads: int = 1, optimization: str = "all", default_options: bool = False):
    """An InferenceSession on the CPU. default_options=True uses ORT's defaults except the thread count."""
    return _session(path, _options(threads, optimization, default_options))


class OnnxClassifier:
    """Call an ONNX classifier like a transformers model: `clf(**batch)` -> logits (torch tensor)."""

    def __init__(self, path: str | Path, threads: int = 1, optimization: str = "all", default_options: bool = False):
        self.path = Path(path)
        self.session = make_session(path, threads, optimization, default_options)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def feeds(self, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in batch]
        if missing:
            raise ValueError(f"the batch lacks input(s) {missing}; pass {self.inputs} (a tokenizer's output)")
        return {n: np.ascontiguousarray(batch[n].numpy() if isinstance(batch[n], torch.Tensor) else batch[n],
                                        dtype=np.int64) for n in self.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feeds)[0]

    def __call__(self, **batch) -> torch.Tensor:
        return torch.from_numpy(self.run(self.feeds(batch)))

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


def op_times(path: str | Path, feeds: dict[str, np.ndarray], runs: int = 3, threads: int = 1,
             default_options: bool = False) -> dict[str, dict]:
    """ORT's own profiler on one ONNX file: kernel time per operator type in ms per run (mean of `runs` runs after
    one warm-up run) and calls per run, as ORT ran the graph after its own optimizations."""
    import json
    import tempfile

    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    so = _options(threads, "all", default_options)
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = _session(path, so)
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    run_windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    first_end = run_windows[0][1]  # the warm-up run: dropped
    out: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first_end:
            row = out.setdefault(e["args"]["op_name"], {"ms": 0.0, "calls": 0})
            row["ms"] += e["dur"] / 1e3 / runs
            row["calls"] += 1
    for row in out.values():
        row["calls"] //= runs
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms"]))


def predict(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Predicted labels of a PyTorch model or an OnnxClassifier on one batch."""
    with torch.inference_mode():
        out = model(**batch)
    logits = out.logits if hasattr(out, "logits") else out
    return logits.argmax(-1)


def evaluate(model, eval_ds, tokenizer, batch_size: int = 32, pad_to: int | None = None,
             return_predictions: bool = False) -> dict:
    """Accuracy and F1 of a PyTorch model, a compiled one or an OnnxClassifier on a tokenised dataset: dynamic
    padding, or every batch padded to `pad_to` tokens (one shape, for compiled models)."""
    from transformers import DataCollatorWithPadding

    from labkit.metrics import classification_metrics

    collate = DataCollatorWithPadding(tokenizer, padding="max_length" if pad_to else True, max_length=pad_to)
    if isinstance(model, nn.Module):
        model.eval()
    preds: list[int] = []
    for start in range(0, len(eval_ds), batch_size):
        batch = dict(collate([eval_ds[i] for i in range(start, min(start + batch_size, len(eval_ds)))]))
        batch.pop("labels", None)
        batch.pop("label", None)
        batch.setdefault("token_type_ids", torch.zeros_like(batch["input_ids"]))
        preds += predict(model, batch).tolist()
    out = classification_metrics(preds, eval_ds["label"])
    return {**out, "predictions": preds} if return_predictions else out


def same_logits(path: str | Path, other: str | Path, vocab: int, seed: int = 0) -> dict:
    """Whether two ONNX classifiers give the same logits to the last bit on a fixed batch (4 x 64, the second
    half of two rows padded) and on one unpadded sequence; "artifact" names the file compared against."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (4, 64), generator=g)
    mask = torch.ones_like(ids)
    mask[2:, 32:] = 0
    batches = [{"input_ids": x, "attention_mask": m, "token_type_ids": torch.zeros_like(x)}
               for x, m in ((ids, mask), (ids[:1, :37], mask[:1, :37]))]
    a, b = OnnxClassifier(path), OnnxClassifier(other)
    diff = max(float(np.abs(a.run(a.feeds(x)) - b.run(b.feeds(x))).max()) for x in batches)
    return {"artifact": Path(other).name, "identical": diff == 0.0, "max_abs_diff": diff,
            "batches": "4 x 64 (two rows half padding) and 1 x 37, random ids, 1 thread"}


def build_artifacts(fp32: nn.Module, qat: nn.Module, out_dir: str | Path) -> dict[str, dict]:
    """Write the deploy artifacts into `out_dir` and describe each (path, size, what it is).

    fp32-raw          the FP32 export as is
    fp32              the FP32 export after ORT's BERT fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm)
    qat-int8          QAT INT8 on torchao's grid, SkipLayerNorm/BiasGelu fusions, attention as exported
    qat-int8-mha      the same with attention fused into MultiHeadAttention
    qat-int8-unfused  the same without any BERT fusion
    qat-int8-exact    qat-int8-unfused's logits bit for bit in fewer kernels (export_qat_int8 fusions="exact"),
                      checked here on a fixed batch ("same_logits_as")
    peer              quantize_dynamic of fp32-raw (per-channel INT8 weights), ORT's own PTQ
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = fp32.config
    arts: dict[str, dict] = {}
    raw = export_onnx(fp32, out / "fp32_raw.onnx")
    arts["fp32-raw"] = {"path": str(raw)}
    fused, counts = optimize_bert(raw, out / "fp32.onnx", cfg.num_attention_heads, cfg.hidden_size)
    arts["fp32"] = {"path": str(fused), "fused": counts}
    arts["qat-int8"] = export_qat_int8(qat, out / "qat_int8.onnx", fusions="no-attention")
    arts["qat-int8-mha"] = export_qat_int8(qat, out / "qat_int8_mha.onnx", fusions="all")
    arts["qat-int8-unfused"] = export_qat_int8(qat, out / "qat_int8_unfused.onnx", fusions="none")
    arts["qat-int8-exact"] = export_qat_int8(qat, out / "qat_int8_exact.onnx", fusions="exact")
    arts["qat-int8-exact"]["same_logits_as"] = same_logits(arts["qat-int8-exact"]["path"],
                                                           arts["qat-int8-unfused"]["path"], cfg.vocab_size)
    arts["peer"] = {"path": str(quantize_dynamic_peer(raw, out / "peer_quantize_dynamic.onnx"))}
    for a in arts.values():
        a["size_mb"] = Path(a["path"]).stat().st_size / 1e6
    return arts


__all__ = ["INPUT_NAMES", "DeployError", "OnnxClassifier", "build_artifacts", "evaluate", "make_session", "op_times",
           "predict", "same_logits", "session_options"]
