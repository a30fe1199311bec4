"""Sharded checkpoints of an FSDP2 QAT run (torch.distributed.checkpoint) and the INT8 model it ends with.

save_checkpoint / load_checkpoint   every rank writes and reads only its own shards (DCP), so a 7B run never
                                    gathers 100 GB of fp32 weights and AdamW moments on one process; the step
                                    and the learning-rate schedule go in a small JSON beside them.
export_int8                         gathers the full (fp32) state dict on rank 0, loads it into a fresh,
                                    unsharded QAT-prepared model in the compute dtype, runs `convert_qat`
                                    (real INT8 torchao tensors) and saves it as safetensors with its config:
                                    `labkit.quant.io.load_quantized` reloads it on one GPU (attention: FA2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

TRAINER_STATE = "trainer.json"


def save_checkpoint(path: str | Path, model: nn.Module, optimizer, step: int, extra: dict | None = None) -> Path:
    """Write the sharded model and optimizer state after `step` steps to folder `path` (collective)."""
    opt, sched = optimizer
    path = Path(path)
    model_sd, optim_sd = get_state_dict(model, opt)
    writer = dcp.FileSystemWriter(str(path), overwrite=True)  # a later save of the same run replaces the earlier
    dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=writer)
    if dist.get_rank() == 0:
        state = {"step": step, "scheduler": sched.state_dict(), "world_size": dist.get_world_size(), **(extra or {})}
        (path / TRAINER_STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
    dist.barrier()
    return path


def load_checkpoint(path: str | Path, model: nn.Module, optimizer) -> dict:
    """Load a checkpoint written by `save_checkpoint` into the sharded model and optimizer (collective; the
    number of processes may differ from the run that wrote it). Returns the trainer state (its "step")."""
    opt, sched = optimizer
    path = Path(path)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{path} is not a labkit FSDP checkpoint (no {TRAINER_STATE}); "
                                "give the folder a run wrote with --checkpoint-dir")
    state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=optim_sd)
    sched.load_state_dict(state["scheduler"])
    return state


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0's CPU (empty on the other ranks); collective."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_int8(model: nn.Module, cfg, env, out_dir: str | Path, sample: torch.Tensor | None = None) -> dict:
    """Gather, convert to INT8 (`convert_qat`) and save for single-GPU inference; collective, rank 0 writes.

    Returns (on rank 0) what was saved: folder, INT8 layers, size, and the converted model's loss on `sample`."""
    from labkit.quant.io import save_quantized
    from labkit.quant.qat import convert_qat, qat_state
    from labkit.train.fsdp_qat import build_model, compute_dtype

    if not cfg.qat:
        raise ValueError("export_int8 needs a QAT run (qat=True): a plain fine-tune has nothing to convert")
    state = full_state_dict(model)
    info: dict = {}
    if env.is_main:
        dtype = compute_dtype(cfg, env.device)
        fresh = build_model(_unsharded(cfg), env.device if env.device.type == "cuda" else torch.device("cpu"))
        missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
        if unexpected or [k for k in missing if "rotary" not in k]:
            raise RuntimeError(f"state dict mismatch on export: missing {missing[:4]}, unexpected {unexpected[:4]}")
        del state
        rotary = type(fresh.model.rotary_emb)
        fresh.model.rotary_emb = rotary(fresh.config)  # a meta-built model has no rotary buffers yet
        fresh = fresh.to(device=env.device, dtype=dtype).eval()
        fresh.model.rotary_emb = rotary(fresh.config).to(env.device)  # inv_freq in fp32, as transformers keeps it
        convert_qat(fresh)
        out_dir = Path(out_dir)
        path = save_quantized(fresh, out_dir)
        fresh.config.save_pretrained(out_dir)
        info = {"folder": str(out_dir), "file": str(path), "size_mb": round(path.stat().st_size / 1e6, 1),
                "int8_layers": len(qat_state(fresh).layers), "dtype": str(dtype).removeprefix("torch."),
                "attention": fresh.config._attn_implementation}
        if sample is not None:
            with torch.no_grad():
                ids = sample.to(env.device)
                info["sample_loss"] = float(fresh(input_ids=ids, labels=ids, use_cache=False).loss)
        del fresh
    dist.barrier()
    return info


def _unsharded(cfg):
    """The same config for a one-process rebuild: built on the meta device, then filled by load_state_dict."""
    from dataclasses import replace

    return replace(cfg, checkpointing=False)
