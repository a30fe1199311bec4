"""Model size: bytes on disk of the saved checkpoint, and bytes held by every weight in memory.

Both count every parameter and persistent buffer, embeddings and head included; quantized tensors
count their int8 codes plus their scales and zero points.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds: its own storage for plain tensors, the sum of its parts for torchao subclasses."""
    if type(t) in (torch.Tensor, nn.Parameter) or not hasattr(t, "tensor_data_names"):
        return t.numel() * t.element_size()
    names = list(t.tensor_data_names) + list(getattr(t, "optional_tensor_data_names", []))
    return sum(tensor_bytes(getattr(t, n)) for n in names if getattr(t, n, None) is not None)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and persistent buffer (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for t in model.state_dict(keep_vars=True).values():
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t)
    return total


def size_on_disk_mb(model: nn.Module, directory: str | Path | None = None) -> float:
    """Megabytes (1e6 bytes) of the safetensors checkpoint `save_quantized` writes for `model`."""
    from labkit.quant.io import save_quantized

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        file = save_quantized(model, Path(tmp) / "model.safetensors")
        return file.stat().st_size / 1e6
