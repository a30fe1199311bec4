"""Save and load INT8 torchao models safely: safetensors only, no pickle, no code execution on load.

torchao's safetensors helpers flatten each quantized tensor (Int8Tensor, IntxUnpackedToInt8Tensor, ...)
into its plain parts (int8 codes, scales, zero points) plus JSON metadata naming an allow-listed class;
loading rebuilds the tensors and assigns them into a fresh float model from `model_factory`.
Tied weights (e.g. a Llama's lm_head sharing the embedding) are stored once and re-tied on load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

FORMAT = "labkit-torchao-safetensors-v1"
WEIGHTS_NAME = "model.safetensors"


class QuantizedCheckpointError(ValueError):
    """The file is not a labkit INT8 checkpoint or does not fit the model it is loaded into."""


def _weights_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / WEIGHTS_NAME if p.suffix != ".safetensors" else p


def _identity(t: torch.Tensor) -> tuple:
    """What makes two state-dict entries the same weight (tied): the storage view for plain tensors,
    the object itself for tensor subclasses (quantize_ gives each module its own)."""
    if type(t) in (torch.Tensor, nn.Parameter):
        return ("plain", t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
    return ("subclass", id(t))


def _state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every parameter and persistent buffer once; returns (tensors, aliases name -> stored name)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = _identity(t)
        if key in first:
            aliases[name] = first[key]
            continue
        first[key] = name
        t = t.detach()
        tensors[name] = t.contiguous() if type(t) is torch.Tensor else t
    return tensors, aliases


def save_quantized(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model`'s weights (INT8 torchao tensors included) to `path` (a folder or a .safetensors file)."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    file = _weights_file(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _state_dict(model)
    try:
        data, metadata = flatten_tensor_state_dict(tensors)
    except ValueError as err:
        raise QuantizedCheckpointError(
            f"cannot save this model safely: {err}. Only plain tensors and torchao's allow-listed quantized "
            "tensors (Int8Tensor, IntxUnpackedToInt8Tensor, Float8Tensor, Int4Tensor) can be written"
        ) from None
    metadata["labkit_format"] = FORMAT
    metadata["labkit_aliases"] = json.dumps(aliases)
    save_file(data, str(file), metadata=metadata)
    return file


def load_state_dict_quantized(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The (tensors, aliases) stored at `path`, quantized tensors rebuilt from their parts."""
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    file = _weights_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"no quantized checkpoint at {file}; write one with save_quantized(model, path)")
    with safe_open(str(file), framework="pt", device="cpu") as fh:
        metadata = fh.metadata() or {}
        if metadata.get("labkit_format") != FORMAT:
            raise QuantizedCheckpointError(f"{file} was not written by labkit.quant.io.save_quantized")
        data = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
    tensors, leftover = unflatten_tensor_state_dict(data, metadata)
    if leftover:
        raise QuantizedCheckpointError(f"{file} has {len(leftover)} unexpected tensor(s): {list(leftover)[:4]}")
    return tensors, json.loads(metadata.get("labkit_aliases", "{}"))


def load_quantized(
    path: str | os.PathLike,
    model_factory: Callable[[], nn.Module],
    device: torch.device | str | None = None,
) -> nn.Module:
    """A model from `model_factory()` (same architecture, float) with the saved INT8 weights assigned in."""
    tensors, aliases = load_state_dict_quantized(path)
    model = model_factory()
    if isinstance(model, tuple):  # e.g. load_classifier returns (model, tokenizer)
        model = model[0]
    model.requires_grad_(False)
    expected = set(model.state_dict())
    missing = expected - set(tensors) - set(aliases)
    unexpected = set(tensors) - expected
    if missing or unexpected:
        raise QuantizedCheckpointError(
            f"the checkpoint does not fit the model from model_factory: missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}; build the same architecture that was saved"
        )
    model.load_state_dict(tensors, strict=False, assign=True)
    for alias, source in aliases.items():  # re-tie shared weights
        owner, _, attr = alias.rpartition(".")
        src_owner, _, src_attr = source.rpartition(".")
        setattr(model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr))
    model.eval()
    return model.to(device) if device is not None else model


@torch.inference_mode()
def predictions_match(a: nn.Module, b: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict:
    """Compare two models' outputs on one batch: identical argmax and the largest absolute difference."""
    la, lb = a(**batch), b(**batch)
    la = la.logits if hasattr(la, "logits") else la
    lb = lb.logits if hasattr(lb, "logits") else lb
    return {
        "same_predictions": bool(torch.equal(la.argmax(-1), lb.argmax(-1))),
        "max_abs_diff": float((la.float() - lb.float()).abs().max()),
    }


def round_trip_check(
    model: nn.Module, path: str | os.PathLike, model_factory: Callable[[], nn.Module], batch: Mapping
) -> dict:
    """Save `model`, load it into a fresh model, and compare predictions on `batch`."""
    file = save_quantized(model, path)
    reloaded = load_quantized(file, model_factory)
    return {"file": str(file), "size_mb": file.stat().st_size / 1e6, **predictions_match(model, reloaded, batch)}
