"""Quantization: from-scratch fake quantizer, torchao QAT and PTQ, layer selection, INT8 save/load.

Heavy submodules (torchao) load on first use: `from labkit.quant.qat import prepare_qat` or `labkit.quant.prepare_qat`.
"""

from labkit.quant.selection import EmptySelectionError, LayerSelection, linear_layers, resolve_layers, selection_filter

_LAZY = {
    "prepare_qat": "labkit.quant.qat", "convert_qat": "labkit.quant.qat", "QATStateError": "labkit.quant.qat",
    "qat_state": "labkit.quant.qat",
    "quantize_dynamic_int8": "labkit.quant.ptq", "quantize_weight_only_int8": "labkit.quant.ptq",
    "quantize_static_int8": "labkit.quant.ptq", "quantize_embeddings_int8": "labkit.quant.ptq",
    "save_quantized": "labkit.quant.io", "load_quantized": "labkit.quant.io", "round_trip_check": "labkit.quant.io",
    "QuantizedCheckpointError": "labkit.quant.io",
    "int8_modules": "labkit.quant.report", "fake_quantized_modules": "labkit.quant.report",
    "quant_summary": "labkit.quant.report",
    "size_on_disk_mb": "labkit.quant.size", "weight_bytes": "labkit.quant.size",
    "fake_quantize": "labkit.quant.fake", "fake_quantize_tensor": "labkit.quant.fake", "qparams": "labkit.quant.fake",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labkit.quant' has no attribute {name!r}")


__all__ = ["EmptySelectionError", "LayerSelection", "linear_layers", "resolve_layers", "selection_filter"]
__all__ += list(_LAZY)
