"""Run an ONNX classifier in OpenVINO on the CPU (an optional runtime: `pip install openvino`).

OpenVINO reads QDQ graphs as FakeQuantize operations and, on x86 and ARM CPUs, runs the quantized MatMuls
(and attention, where its patterns match) as INT8 kernels. `OpenVinoClassifier` is called like
`labkit.deploy.onnx_runtime.OnnxClassifier`: `clf(**batch)` -> logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch


def openvino_available() -> bool:
    """Whether the `openvino` package can be imported here."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


class OpenVinoClassifier:
    """An ONNX file compiled by OpenVINO for the CPU: latency hint, `threads` inference threads, one stream."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        if not openvino_available():
            raise ImportError("OpenVINO is not installed: `pip install openvino` (an optional runtime of the lab)")
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}; export one first")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        core = ov.Core()
        self.compiled = core.compile_model(str(self.path), "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.inputs = [p.get_any_name() for p in self.compiled.inputs]

    def feeds(self, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in batch]
        if missing:
            raise ValueError(f"the batch lacks input(s) {missing}; pass {self.inputs} (a tokenizer's output)")
        return {n: np.ascontiguousarray(batch[n].numpy() if isinstance(batch[n], torch.Tensor) else batch[n],
                                        dtype=np.int64) for n in self.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.request.infer(feeds)[self.compiled.outputs[0]].copy()

    def __call__(self, **batch) -> torch.Tensor:
        return torch.from_numpy(self.run(self.feeds(batch)))

    def executed_precisions(self) -> dict[str, int]:
        """How many executed layers ran in each precision (from OpenVINO's runtime model): I8/U8 means INT8 kernels."""
        counts: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            kind = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
            if kind in ("Const", "Input", "Output"):
                continue
            key = f"{kind}:{rt['runtimePrecision'].astype(str) if 'runtimePrecision' in rt else '?'}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


__all__ = ["OpenVinoClassifier", "openvino_available"]
